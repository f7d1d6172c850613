//! The seccomp filter compiler: one [`Filter`] in, one classic BPF program out.
//!
//! The program has three parts, in this order:
//! 1. Architecture: load `seccomp_data.arch`; anything but the filter's own (a 32-bit
//!    compat process, say) is killed with `SECCOMP_RET_KILL_PROCESS`.
//! 2. Dispatch: load `seccomp_data.nr` and binary-search the syscall number space. Every
//!    number from 0 to `u32::MAX` belongs to one interval of consecutive numbers with the
//!    same outcome: allow, `errno(default_errno)` (not allowed, or unknown to the table),
//!    `errno(ENOSYS)` (the `enosys` list, clone3) or an argument-check block. `n` intervals
//!    take `n - 1` `jge` instructions and at most about `log2(n)` of them run per syscall.
//!    The x32 ABI of x86_64 (numbers with bit 30 set) lands in the last interval, which is
//!    `errno(default_errno)`, because every number of the tables is below 0x4000_0000.
//! 3. Argument blocks (one per distinct rule set, e.g. clone, socket, ioctl, personality):
//!    rules of one name are alternatives, the checks of one rule all have to hold; each
//!    check compares the low 32 bits of an argument (`seccomp_data.args[i]` at offset
//!    16 + 8 i, the low word on little-endian x86_64 and aarch64), then jumps to the shared
//!    `ret` instructions at the end.
//!
//! The dispatch uses only the instructions the kernel's action cache can evaluate (loads
//! of nr and arch, `jeq`/`jge`/`jset` with constants, `ja`, `ret`; kernel/seccomp.c,
//! `seccomp_is_const_allow`, Linux 5.11), so the kernel emulates the filter once at load
//! and lets the unconditionally allowed syscalls through without running it at all.
//!
//! Classic BPF jumps forward only, by at most 255 instructions in a conditional jump;
//! [`compile`] lays the program out with symbolic labels and turns a branch that would go
//! further into a conditional jump to a `ja` (32-bit offset) placed right after it.
//!
//! Precedence matches the two-filter program seccompiler produced before: a name in
//! `enosys` answers ENOSYS even if an allow rule mentions it.

use std::collections::BTreeMap;

use crate::seccomp::{Arch, ArgOp, Filter};
use crate::syscalls;

/// One classic BPF instruction, field for field `struct sock_filter` (linux/filter.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub const fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    pub const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }
}

// Instruction classes and fields (linux/bpf_common.h).
pub const BPF_LD: u16 = 0x00;
pub const BPF_ALU: u16 = 0x04;
pub const BPF_JMP: u16 = 0x05;
pub const BPF_RET: u16 = 0x06;
pub const BPF_W: u16 = 0x00;
pub const BPF_ABS: u16 = 0x20;
pub const BPF_K: u16 = 0x00;
pub const BPF_AND: u16 = 0x50;
pub const BPF_JA: u16 = 0x00;
pub const BPF_JEQ: u16 = 0x10;
pub const BPF_JGT: u16 = 0x20;
pub const BPF_JGE: u16 = 0x30;
pub const BPF_JSET: u16 = 0x40;
/// Longest program the kernel loads (linux/bpf_common.h).
pub const BPF_MAXINSNS: usize = 4096;

// Filter return values (linux/seccomp.h).
pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// The kernel clamps an errno return to this (linux/err.h, MAX_ERRNO).
pub const MAX_ERRNO: u32 = 4095;

// seccomp_data.arch values (linux/audit.h).
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer;
/// __u64 args[6]; }`.
pub const OFFSET_NR: u32 = 0;
pub const OFFSET_ARCH: u32 = 4;
/// Offset of the low 32 bits of `args[index]` (both supported architectures are
/// little-endian).
pub const fn offset_arg_low(index: u8) -> u32 {
    16 + 8 * index as u32
}

/// The `seccomp_data.arch` value of `arch`.
pub fn audit_arch(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => AUDIT_ARCH_X86_64,
        Arch::Aarch64 => AUDIT_ARCH_AARCH64,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    #[error("{name:?} is not a syscall on {arch:?}")]
    UnknownSyscall { name: String, arch: Arch },
    #[error("argument {index} of {name} does not exist (syscalls take at most 6)")]
    ArgIndex { name: String, index: u8 },
    #[error("{name}: {value:#x} does not fit in the low 32 bits an argument check compares")]
    WideValue { name: String, value: u64 },
    #[error("errno {0} is not between 1 and {MAX_ERRNO}")]
    Errno(u32),
    #[error("program of {len} instructions exceeds the kernel's limit of {BPF_MAXINSNS}")]
    TooLong { len: usize },
}

/// What a syscall number leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allow,
    Errno(u32),
    /// Index into the distinct argument blocks.
    Args(usize),
}

/// Numbers from `start` up to the next interval's start have `outcome`.
#[derive(Debug, Clone, Copy)]
struct Interval {
    start: u32,
    outcome: Outcome,
}

/// A rule as the program sees it: (argument index, operation on the low 32 bits).
type Checks = Vec<(u8, Op32)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op32 {
    Eq(u32),
    Ne(u32),
    MaskedEq { mask: u32, value: u32 },
}

/// Compiles `filter` to one program (see the module doc for its shape).
pub fn compile(filter: &Filter) -> Result<Vec<Insn>, BpfError> {
    for errno in [filter.default_errno, crate::seccomp::ENOSYS] {
        if !(1..=MAX_ERRNO).contains(&errno) {
            return Err(BpfError::Errno(errno));
        }
    }
    let arch = filter.arch;
    let nr = |name: &str| {
        syscalls::number(arch, name).ok_or_else(|| BpfError::UnknownSyscall {
            name: name.to_string(),
            arch,
        })
    };

    // Per syscall number: None = allowed unconditionally, Some(rules) = allowed when one
    // of the rules holds.
    let mut allowed: BTreeMap<u32, Option<Vec<Checks>>> = BTreeMap::new();
    for rule in &filter.allow {
        let n = nr(&rule.name)?;
        let checks = rule
            .args
            .iter()
            .map(|c| {
                if c.index > 5 {
                    return Err(BpfError::ArgIndex {
                        name: rule.name.clone(),
                        index: c.index,
                    });
                }
                let narrow = |v: u64| {
                    u32::try_from(v).map_err(|_| BpfError::WideValue {
                        name: rule.name.clone(),
                        value: v,
                    })
                };
                let op = match c.op {
                    ArgOp::Eq(v) => Op32::Eq(narrow(v)?),
                    ArgOp::Ne(v) => Op32::Ne(narrow(v)?),
                    ArgOp::MaskedEq { mask, value } => Op32::MaskedEq {
                        mask: narrow(mask)?,
                        value: narrow(value)?,
                    },
                };
                Ok((c.index, op))
            })
            .collect::<Result<Checks, BpfError>>()?;
        let slot = allowed.entry(n).or_insert_with(|| Some(Vec::new()));
        match slot {
            // A rule without checks allows the call whatever the other rules say.
            Some(_) if checks.is_empty() => *slot = None,
            Some(rules) => rules.push(checks),
            None => {}
        }
    }

    let mut outcomes: Vec<(u32, Outcome)> = Vec::new();
    let mut blocks: Vec<Vec<Checks>> = Vec::new();
    let enosys = filter
        .enosys
        .iter()
        .map(|name| nr(name))
        .collect::<Result<Vec<u32>, BpfError>>()?;
    for n in &enosys {
        outcomes.push((*n, Outcome::Errno(crate::seccomp::ENOSYS)));
    }
    for (n, rules) in allowed {
        if enosys.contains(&n) {
            continue;
        }
        let outcome = match rules {
            None => Outcome::Allow,
            Some(rules) => {
                // Syscalls with the same rules share one block.
                let i = match blocks.iter().position(|b| *b == rules) {
                    Some(i) => i,
                    None => {
                        blocks.push(rules);
                        blocks.len() - 1
                    }
                };
                Outcome::Args(i)
            }
        };
        outcomes.push((n, outcome));
    }
    outcomes.sort_unstable_by_key(|(n, _)| *n);
    // Only a name listed twice in `enosys` leaves a duplicate, with the same outcome.
    outcomes.dedup_by_key(|(n, _)| *n);
    let intervals = intervals(&outcomes, Outcome::Errno(filter.default_errno));

    let mut asm = Asm::default();
    let allow = asm.label();
    let deny = asm.label();
    let mut errnos: Vec<(u32, Label)> = vec![(filter.default_errno, deny)];
    let mut block_labels: Vec<Label> = Vec::new();
    for _ in &blocks {
        block_labels.push(asm.label());
    }
    let mut target = |o: Outcome, asm: &mut Asm| match o {
        Outcome::Allow => allow,
        Outcome::Errno(e) => match errnos.iter().find(|(x, _)| *x == e) {
            Some((_, l)) => *l,
            None => {
                let l = asm.label();
                errnos.push((e, l));
                l
            }
        },
        Outcome::Args(i) => block_labels[i],
    };

    // 1. Architecture.
    asm.stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH);
    let nr_label = asm.label();
    let kill = asm.label();
    asm.jump(BPF_JMP | BPF_JEQ | BPF_K, audit_arch(arch), nr_label, kill);
    asm.place(kill);
    asm.stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    // 2. Dispatch on the number.
    asm.place(nr_label);
    asm.stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_NR);
    let root = subtree_label(&intervals, &mut asm, &mut target);
    if intervals.len() == 1 {
        asm.jump_always(root);
    } else {
        emit_tree(&intervals, root, &mut asm, &mut target);
    }
    // 3. Argument blocks.
    for (rules, label) in blocks.iter().zip(&block_labels) {
        asm.place(*label);
        emit_block(rules, allow, deny, &mut asm);
    }
    // Shared returns.
    asm.place(allow);
    asm.stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    for (errno, label) in errnos {
        asm.place(label);
        asm.stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno);
    }
    asm.assemble()
}

/// Cuts 0..=u32::MAX into maximal intervals of one outcome. `outcomes` is sorted by
/// number, without duplicates; numbers not in it get `default`.
fn intervals(outcomes: &[(u32, Outcome)], default: Outcome) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    let mut push = |start: u32, outcome: Outcome| match out.last() {
        Some(last) if last.outcome == outcome => {}
        _ => out.push(Interval { start, outcome }),
    };
    let mut next = 0u64;
    for &(n, outcome) in outcomes {
        if u64::from(n) > next {
            push(next as u32, default);
        }
        push(n, outcome);
        next = u64::from(n) + 1;
    }
    if next <= u64::from(u32::MAX) {
        push(next as u32, default);
    }
    out
}

/// Where to jump for the intervals `ivs`: the outcome's own target if there is one
/// interval, else a fresh label for the subtree's first comparison.
fn subtree_label(
    ivs: &[Interval],
    asm: &mut Asm,
    target: &mut impl FnMut(Outcome, &mut Asm) -> Label,
) -> Label {
    if ivs.len() == 1 {
        target(ivs[0].outcome, asm)
    } else {
        asm.label()
    }
}

/// Emits the comparisons that find the interval of the number in the accumulator, for
/// `ivs.len() >= 2`, starting at `here`. Left subtrees follow their parent directly, so
/// every jump goes forward.
fn emit_tree(
    ivs: &[Interval],
    here: Label,
    asm: &mut Asm,
    target: &mut impl FnMut(Outcome, &mut Asm) -> Label,
) {
    asm.place(here);
    let (left, right) = ivs.split_at(ivs.len() / 2);
    let l = subtree_label(left, asm, target);
    let r = subtree_label(right, asm, target);
    asm.jump(BPF_JMP | BPF_JGE | BPF_K, right[0].start, r, l);
    if left.len() > 1 {
        emit_tree(left, l, asm, target);
    }
    if right.len() > 1 {
        emit_tree(right, r, asm, target);
    }
}

/// Emits the rules of one syscall: any rule whose checks all hold jumps to `allow`; when
/// the last rule fails, to `deny`. The accumulator holds the number on entry.
fn emit_block(rules: &[Checks], allow: Label, deny: Label, asm: &mut Asm) {
    // The seccomp_data word the accumulator holds unmodified, if known; a check on the
    // same argument as the one before it needs no new load.
    let mut acc = Some(OFFSET_NR);
    for (ri, rule) in rules.iter().enumerate() {
        let last_rule = ri + 1 == rules.len();
        let fail = if last_rule { deny } else { asm.label() };
        // The accumulator at each jump to `fail`: the next rule starts from what they agree on.
        let mut at_fail: Vec<Option<u32>> = Vec::new();
        for (ci, &(index, op)) in rule.iter().enumerate() {
            let pass = if ci + 1 == rule.len() {
                allow
            } else {
                asm.label()
            };
            let offset = offset_arg_low(index);
            if acc != Some(offset) {
                asm.stmt(BPF_LD | BPF_W | BPF_ABS, offset);
                acc = Some(offset);
            }
            match op {
                Op32::Eq(v) => asm.jump(BPF_JMP | BPF_JEQ | BPF_K, v, pass, fail),
                Op32::Ne(v) => asm.jump(BPF_JMP | BPF_JEQ | BPF_K, v, fail, pass),
                // (arg & mask) == 0 exactly when no bit of the mask is set.
                Op32::MaskedEq { mask, value: 0 } => {
                    asm.jump(BPF_JMP | BPF_JSET | BPF_K, mask, fail, pass)
                }
                Op32::MaskedEq { mask, value } => {
                    if mask != u32::MAX {
                        asm.stmt(BPF_ALU | BPF_AND | BPF_K, mask);
                        acc = None;
                    }
                    asm.jump(BPF_JMP | BPF_JEQ | BPF_K, value, pass, fail);
                }
            }
            at_fail.push(acc);
            if pass != allow {
                asm.place(pass);
            }
        }
        if !last_rule {
            asm.place(fail);
            acc = match at_fail.split_first() {
                Some((first, rest)) if rest.iter().all(|a| a == first) => *first,
                _ => None,
            };
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

#[derive(Debug)]
enum Item {
    Insn(Insn),
    /// A conditional jump; a branch marked far goes through a `ja` right after it.
    Jump {
        code: u16,
        k: u32,
        jt: Label,
        jf: Label,
        far_t: bool,
        far_f: bool,
    },
    Always(Label),
    Place(Label),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Insn(_) | Item::Always(_) => 1,
            Item::Jump { far_t, far_f, .. } => 1 + usize::from(*far_t) + usize::from(*far_f),
            Item::Place(_) => 0,
        }
    }
}

/// A program with symbolic forward jumps.
#[derive(Debug, Default)]
struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn place(&mut self, label: Label) {
        self.items.push(Item::Place(label));
    }

    fn stmt(&mut self, code: u16, k: u32) {
        self.items.push(Item::Insn(Insn::stmt(code, k)));
    }

    fn jump(&mut self, code: u16, k: u32, jt: Label, jf: Label) {
        self.items.push(Item::Jump {
            code,
            k,
            jt,
            jf,
            far_t: false,
            far_f: false,
        });
    }

    fn jump_always(&mut self, to: Label) {
        self.items.push(Item::Always(to));
    }

    /// Address of every label in the current layout.
    fn addresses(&self) -> Vec<usize> {
        let mut at = vec![usize::MAX; self.labels];
        let mut pc = 0;
        for item in &self.items {
            if let Item::Place(l) = item {
                at[l.0] = pc;
            }
            pc += item.len();
        }
        at
    }

    /// Resolves the labels. Each round marks the branches that do not fit in 8 bits as
    /// far; that lengthens the program, so repeat until a round marks nothing (branches
    /// only ever become far, so this ends).
    fn assemble(mut self) -> Result<Vec<Insn>, BpfError> {
        loop {
            let at = self.addresses();
            let mut changed = false;
            let mut pc = 0;
            for item in &mut self.items {
                // The length this layout was computed with (marking changes it).
                let len = item.len();
                if let Item::Jump {
                    jt,
                    jf,
                    far_t,
                    far_f,
                    ..
                } = item
                {
                    // A far branch jumps to its trampoline right after the
                    // conditional jump; a near one straight to its target.
                    for (label, far) in [(*jt, far_t), (*jf, far_f)] {
                        if !*far && forward(at[label.0], pc + 1) > 255 {
                            *far = true;
                            changed = true;
                        }
                    }
                }
                pc += len;
            }
            if !changed {
                break;
            }
        }
        let at = self.addresses();
        let mut out: Vec<Insn> = Vec::new();
        for item in &self.items {
            let pc = out.len();
            match *item {
                Item::Insn(insn) => out.push(insn),
                Item::Always(to) => {
                    out.push(Insn::stmt(BPF_JMP | BPF_JA, ja_offset(at[to.0], pc + 1)))
                }
                Item::Jump {
                    code,
                    k,
                    jt,
                    jf,
                    far_t,
                    far_f,
                } => {
                    // Near offsets fit: the loop above ran until they did.
                    let near = |l: Label| forward(at[l.0], pc + 1) as u8;
                    let (ot, of) = match (far_t, far_f) {
                        (false, false) => (near(jt), near(jf)),
                        (true, false) => (0, near(jf)),
                        (false, true) => (near(jt), 0),
                        (true, true) => (0, 1),
                    };
                    out.push(Insn::jump(code, k, ot, of));
                    if far_t {
                        let here = out.len();
                        out.push(Insn::stmt(BPF_JMP | BPF_JA, ja_offset(at[jt.0], here + 1)));
                    }
                    if far_f {
                        let here = out.len();
                        out.push(Insn::stmt(BPF_JMP | BPF_JA, ja_offset(at[jf.0], here + 1)));
                    }
                }
                Item::Place(_) => {}
            }
        }
        if out.len() > BPF_MAXINSNS {
            return Err(BpfError::TooLong { len: out.len() });
        }
        Ok(out)
    }
}

/// Distance of a forward jump from `from` (the instruction after the jump) to `to`.
fn forward(to: usize, from: usize) -> usize {
    assert!(
        to != usize::MAX && to >= from,
        "the compiler emitted a backward or dangling jump"
    );
    to - from
}

fn ja_offset(to: usize, from: usize) -> u32 {
    // Programs longer than BPF_MAXINSNS are refused after layout, so this only
    // saturates for a program that is refused anyway.
    u32::try_from(forward(to, from)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
