//! Seccomp: compile a policy [`Filter`] to BPF once, install it in a box process.
//!
//! The rule model (allowlist, argument checks, the clone3 ENOSYS answer) lives in
//! `policy::seccomp`, and so does the compiler (`policy::bpf`, pure, with the per-arch
//! syscall tables of `policy::syscalls`; unknown names are refused there). It produces one
//! program: kill a foreign architecture, binary-search the syscall number, check the
//! arguments of clone, socket, ioctl and personality, answer EPERM for anything not
//! allowed and ENOSYS for clone3 (so libc falls back to clone, whose flags the program
//! checks). About 85 instructions for the default x86_64 filter, where seccompiler's linear
//! chain took 1,486; loading costs roughly linear time in the length.
//!
//! This module converts the program to seccompiler's `sock_filter` and installs it with
//! seccompiler's `apply_filter`, which sets no_new_privs first, so the filter cannot be shed
//! by executing a setuid binary.

use policy::bpf::BpfError;
use policy::seccomp::Filter;
use seccompiler::{sock_filter, BpfProgram};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] BpfError),
    #[error("cannot install the seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

/// A filter compiled for this machine, ready to install (compile once, reuse).
#[derive(Debug, Clone)]
pub struct Compiled {
    program: BpfProgram,
}

impl Compiled {
    /// Number of BPF instructions (a filter's cost is about linear in this).
    pub fn instructions(&self) -> usize {
        self.program.len()
    }
}

pub fn compile(filter: &Filter) -> Result<Compiled, SeccompError> {
    let program = policy::bpf::compile(filter)
        .map_err(SeccompError::Compile)?
        .into_iter()
        .map(|i| sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    Ok(Compiled { program })
}

/// Installs the filter on the calling thread (sets no_new_privs first). Irreversible: call
/// it in the process that is about to exec into the box, never in the daemon.
pub fn apply(compiled: &Compiled) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&compiled.program).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests;

impl Compiled {
    /// The programs in installation order, as carried in a helper spec (the spec holds a
    /// list; there is one program now).
    pub fn raw(&self) -> Vec<Vec<crate::runtime::boxes::spec::RawInsn>> {
        vec![self
            .program
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect()]
    }
}

/// Installs programs received in a helper spec, in order (sets no_new_privs first).
pub fn apply_raw(
    programs: &[Vec<crate::runtime::boxes::spec::RawInsn>],
) -> Result<(), SeccompError> {
    for p in programs.iter().filter(|p| !p.is_empty()) {
        let prog: BpfProgram = p
            .iter()
            .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect();
        seccompiler::apply_filter(&prog).map_err(SeccompError::Apply)?;
    }
    Ok(())
}
