//! Seccomp: compile a policy [`Filter`] to BPF once, install it in a box process.
//!
//! The rule model (allowlist, argument checks, the clone3 ENOSYS answer) lives in
//! `policy::seccomp`; this module only renders it for seccompiler's JSON frontend (which
//! resolves syscall names per architecture and refuses unknown ones), compiles, and applies.
//! Two programs are installed, in this order:
//! 1. `box`: the allowlist; anything else fails with EPERM.
//! 2. `enosys`: answers ENOSYS for clone3 and allows everything else. When both filters
//!    return an errno, the kernel takes the most recently installed one (seccomp(2),
//!    "if multiple filters exist ... the return value of the most recently installed"),
//!    so clone3 reports ENOSYS and libc falls back to clone, whose flags the first
//!    program checks.
//!
//! Installing sets no_new_privs first (seccompiler does), so the filter cannot be shed by
//! executing a setuid binary.

use policy::seccomp::{Arch, ArgOp, Filter};
use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::Error),
    #[error("compiled seccomp filter lacks program {0}")]
    Missing(&'static str),
    #[error("cannot install the seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

/// A filter compiled for this machine, ready to install (compile once, reuse).
#[derive(Debug, Clone)]
pub struct Compiled {
    allowlist: BpfProgram,
    enosys: BpfProgram,
}

impl Compiled {
    /// Number of BPF instructions (a filter's cost is about linear in this).
    pub fn instructions(&self) -> usize {
        self.allowlist.len() + self.enosys.len()
    }
}

fn condition(index: u8, op: ArgOp) -> Value {
    let (op, val) = match op {
        ArgOp::Eq(v) => (json!("eq"), v),
        ArgOp::Ne(v) => (json!("ne"), v),
        ArgOp::MaskedEq { mask, value } => (json!({ "masked_eq": mask }), value),
    };
    // dword: compare the low 32 bits only, which is what the kernel reads for int-typed
    // arguments (and what closes the sign-extended TIOCSTI trick).
    json!({ "index": index, "type": "dword", "op": op, "val": val })
}

/// The seccompiler JSON for `filter`.
pub fn render(filter: &Filter) -> Value {
    let rules: Vec<Value> = filter
        .allow
        .iter()
        .map(|r| {
            if r.args.is_empty() {
                json!({ "syscall": r.name })
            } else {
                let args: Vec<Value> = r.args.iter().map(|a| condition(a.index, a.op)).collect();
                json!({ "syscall": r.name, "args": args })
            }
        })
        .collect();
    let enosys: Vec<Value> = filter
        .enosys
        .iter()
        .map(|n| json!({ "syscall": n }))
        .collect();
    json!({
        "box": {
            "mismatch_action": { "errno": filter.default_errno },
            "match_action": "allow",
            "filter": rules,
        },
        "enosys": {
            "mismatch_action": "allow",
            "match_action": { "errno": policy::seccomp::ENOSYS },
            "filter": enosys,
        },
    })
}

pub fn compile(filter: &Filter) -> Result<Compiled, SeccompError> {
    let arch = match filter.arch {
        Arch::X86_64 => TargetArch::x86_64,
        Arch::Aarch64 => TargetArch::aarch64,
    };
    let text = render(filter).to_string();
    let mut map =
        seccompiler::compile_from_json(text.as_bytes(), arch).map_err(SeccompError::Compile)?;
    Ok(Compiled {
        allowlist: map.remove("box").ok_or(SeccompError::Missing("box"))?,
        enosys: map
            .remove("enosys")
            .ok_or(SeccompError::Missing("enosys"))?,
    })
}

/// Installs the filter on the calling thread (sets no_new_privs first). Irreversible: call
/// it in the process that is about to exec into the box, never in the daemon.
pub fn apply(compiled: &Compiled) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&compiled.allowlist).map_err(SeccompError::Apply)?;
    seccompiler::apply_filter(&compiled.enosys).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests;

impl Compiled {
    /// The programs in installation order, as carried in a helper spec.
    pub fn raw(&self) -> Vec<Vec<crate::runtime::boxes::spec::RawInsn>> {
        [&self.allowlist, &self.enosys]
            .iter()
            .map(|p| p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
            .collect()
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
