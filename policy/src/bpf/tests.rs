use super::*;
use crate::seccomp::{
    box_filter, AllowRule, ArgCheck, SeccompRules, AF_ALG, AF_VSOCK, CLONE_NAMESPACE_FLAGS, ENOSYS,
    EPERM, PERSONALITY_ALLOWED, TIOCSTI,
};

const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
const HIGH: u64 = 0xffff_ffff_0000_0000;

/// `struct seccomp_data` as the kernel hands it to a filter.
#[derive(Debug, Clone, Copy)]
struct Data {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Data {
    /// The 32-bit word at `offset`, little-endian like both supported architectures.
    fn word(&self, offset: u32) -> u32 {
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&self.nr.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.arch.to_le_bytes());
        bytes[8..16].copy_from_slice(&0x7fff_1234_5678u64.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let o = offset as usize;
        u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap())
    }
}

/// What the kernel's loader checks (net/core/filter.c `bpf_check_classic`,
/// kernel/seccomp.c `seccomp_check_filter`), for the instructions this compiler uses:
/// a length in 1..=4096, known opcodes, loads inside `seccomp_data` and aligned, every
/// jump inside the program, a `ret` at the end.
fn validate(prog: &[Insn]) {
    assert!(
        !prog.is_empty() && prog.len() <= BPF_MAXINSNS,
        "{}",
        prog.len()
    );
    for (pc, insn) in prog.iter().enumerate() {
        let next = pc + 1;
        let ok = match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => insn.k < 64 && insn.k % 4 == 0,
            c if c == BPF_ALU | BPF_AND | BPF_K => true,
            c if c == BPF_RET | BPF_K => true,
            c if c == BPF_JMP | BPF_JA => next + (insn.k as usize) < prog.len(),
            c if [BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JSET].contains(&(c & !BPF_JMP))
                && c & 0x07 == BPF_JMP =>
            {
                next + usize::from(insn.jt) < prog.len() && next + usize::from(insn.jf) < prog.len()
            }
            _ => false,
        };
        assert!(ok, "instruction {pc} is invalid: {insn:?}");
    }
    assert_eq!(prog.last().unwrap().code, BPF_RET | BPF_K);
}

/// Runs `prog` on `data`. With `constant_only`, behaves like the kernel's
/// `seccomp_is_const_allow`: gives up (None) at the first load of anything but nr or arch.
fn execute(prog: &[Insn], data: &Data, constant_only: bool) -> Option<u32> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = prog[pc];
        pc += 1;
        let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                if constant_only && insn.k != OFFSET_NR && insn.k != OFFSET_ARCH {
                    return None;
                }
                a = data.word(insn.k);
            }
            c if c == BPF_ALU | BPF_AND | BPF_K => a &= insn.k,
            c if c == BPF_RET | BPF_K => return Some(insn.k),
            c if c == BPF_JMP | BPF_JA => pc += insn.k as usize,
            c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += branch(a == insn.k),
            c if c == BPF_JMP | BPF_JGE | BPF_K => pc += branch(a >= insn.k),
            c if c == BPF_JMP | BPF_JGT | BPF_K => pc += branch(a > insn.k),
            c if c == BPF_JMP | BPF_JSET | BPF_K => pc += branch(a & insn.k != 0),
            _ => panic!("unexpected instruction {insn:?} at {}", pc - 1),
        }
    }
}

fn run(prog: &[Insn], data: &Data) -> u32 {
    execute(prog, data, false).unwrap()
}

/// The meaning of `filter`, evaluated directly from the rule model.
fn expected(filter: &Filter, data: &Data) -> u32 {
    if data.arch != audit_arch(filter.arch) {
        return SECCOMP_RET_KILL_PROCESS;
    }
    let deny = SECCOMP_RET_ERRNO | filter.default_errno;
    let Some(&(name, _)) = syscalls::table(filter.arch)
        .iter()
        .find(|(_, n)| *n == data.nr)
    else {
        return deny;
    };
    if filter.enosys.iter().any(|n| n == name) {
        return SECCOMP_RET_ERRNO | ENOSYS;
    }
    let holds = |c: &ArgCheck| {
        let low = data.args[usize::from(c.index)] & 0xffff_ffff;
        match c.op {
            ArgOp::Eq(v) => low == v,
            ArgOp::Ne(v) => low != v,
            ArgOp::MaskedEq { mask, value } => low & mask == value,
        }
    };
    if filter
        .allow
        .iter()
        .any(|r| r.name == name && r.args.iter().all(holds))
    {
        SECCOMP_RET_ALLOW
    } else {
        deny
    }
}

fn data(filter: &Filter, nr: u32, args: [u64; 6]) -> Data {
    Data {
        nr,
        arch: audit_arch(filter.arch),
        args,
    }
}

/// Argument vectors that exercise the rules of `name`: for each checked argument, the
/// values of its checks, their neighbours, each bit of a mask alone, with and without the
/// high 32 bits set; other arguments hold junk.
fn argument_cases(filter: &Filter, name: &str) -> Vec<[u64; 6]> {
    const JUNK: u64 = 0x0123_4567_89ab_cdef;
    let mut per_index: Vec<Vec<u64>> = vec![Vec::new(); 6];
    for rule in filter.allow.iter().filter(|r| r.name == name) {
        for c in &rule.args {
            let values = &mut per_index[usize::from(c.index)];
            match c.op {
                ArgOp::Eq(v) | ArgOp::Ne(v) => {
                    values.extend([v, v ^ 1, v.wrapping_add(1) & 0xffff_ffff])
                }
                ArgOp::MaskedEq { mask, value } => {
                    values.extend([value, mask, !mask & 0xffff_ffff, value | mask]);
                    values.extend((0..32).map(|b| 1u64 << b).filter(|bit| mask & bit != 0));
                }
            }
        }
    }
    let mut cases = vec![[JUNK; 6]];
    for (index, values) in per_index.iter().enumerate() {
        if values.is_empty() {
            continue;
        }
        let mut all: Vec<u64> = vec![0, 1, 0xffff_ffff, 0x8000_0000];
        all.extend(values);
        let widened: Vec<u64> = all
            .iter()
            .flat_map(|v| [*v, v | HIGH, v | 1 << 32])
            .collect();
        cases = cases
            .iter()
            .flat_map(|case| {
                widened.iter().map(move |v| {
                    let mut c = *case;
                    c[index] = *v;
                    c
                })
            })
            .collect();
    }
    cases
}

/// Checks `prog` against `filter` for every number up to 10 past the highest of the
/// table, numbers far beyond it (x32 ones among them), and other architectures.
fn assert_equivalent(filter: &Filter, prog: &[Insn]) {
    validate(prog);
    let table = syscalls::table(filter.arch);
    let max = table.iter().map(|(_, n)| *n).max().unwrap();
    let name_of = |nr: u32| table.iter().find(|(_, n)| *n == nr).map(|(name, _)| *name);
    let far = [
        0x4000_0000,
        0x4000_0001,
        0x4000_0000 | 16,
        0x4000_0000 | 56,
        0x4000_0000 + 512,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX - 1,
        u32::MAX,
    ];
    for nr in (0..=max + 10).chain(far) {
        let cases = match name_of(nr) {
            Some(name) => argument_cases(filter, name),
            None => vec![[0; 6]],
        };
        for args in cases.into_iter().chain([[u64::MAX; 6], [0; 6]]) {
            let d = data(filter, nr, args);
            assert_eq!(
                run(prog, &d),
                expected(filter, &d),
                "{:?} nr {nr} ({:?}) args {args:x?}",
                filter.arch,
                name_of(nr)
            );
        }
    }
    for arch in [
        AUDIT_ARCH_X86_64,
        AUDIT_ARCH_AARCH64,
        AUDIT_ARCH_I386,
        AUDIT_ARCH_ARM,
        0,
    ] {
        if arch == audit_arch(filter.arch) {
            continue;
        }
        for nr in [0, 1, 16, 56, 59, 220, 221] {
            let d = Data {
                nr,
                arch,
                args: [0; 6],
            };
            assert_eq!(run(prog, &d), SECCOMP_RET_KILL_PROCESS, "arch {arch:#x}");
        }
    }
}

fn default_filter(arch: Arch) -> Filter {
    box_filter(arch, &SeccompRules::default())
}

fn nr(arch: Arch, name: &str) -> u32 {
    syscalls::number(arch, name).unwrap()
}

const ALLOW: u32 = SECCOMP_RET_ALLOW;
const EPERM_RET: u32 = SECCOMP_RET_ERRNO | EPERM;
const ENOSYS_RET: u32 = SECCOMP_RET_ERRNO | ENOSYS;

#[test]
fn the_default_filter_means_the_same_as_the_rule_model_for_every_number_on_both_architectures() {
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let filter = default_filter(arch);
        let prog = compile(&filter).unwrap();
        assert_equivalent(&filter, &prog);
    }
}

#[test]
fn the_security_baseline_cases_answer_as_documented() {
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let filter = default_filter(arch);
        let prog = compile(&filter).unwrap();
        let call = |name: &str, args: &[u64]| {
            let mut a = [0u64; 6];
            a[..args.len()].copy_from_slice(args);
            run(&prog, &data(&filter, nr(arch, name), a))
        };
        let cases: &[(&str, &[u64], u32)] = &[
            ("read", &[], ALLOW),
            ("execve", &[], ALLOW),
            ("ioctl", &[0, 0x5401], ALLOW), // TCGETS
            ("ioctl", &[0, TIOCSTI], EPERM_RET),
            // The sign-extension trick: only the low 32 bits reach the tty driver.
            ("ioctl", &[0, 0xffff_ffff_0000_5412], EPERM_RET),
            ("ioctl", &[0, 0x0000_0001_0000_5412], EPERM_RET),
            ("clone", &[0x11 /* SIGCHLD */], ALLOW),
            ("clone", &[0x003d_0f00 /* pthread_create's flags */], ALLOW),
            ("clone", &[0x1000_0011 /* CLONE_NEWUSER */], EPERM_RET),
            ("clone", &[0x0002_0011 /* CLONE_NEWNS */], EPERM_RET),
            ("clone", &[0x4000_0011 /* CLONE_NEWNET */], EPERM_RET),
            ("clone", &[CLONE_NAMESPACE_FLAGS], EPERM_RET),
            ("clone3", &[], ENOSYS_RET),
            ("socket", &[2 /* AF_INET */, 1], ALLOW),
            ("socket", &[1 /* AF_UNIX */, 1], ALLOW),
            ("socket", &[10 /* AF_INET6 */, 2], ALLOW),
            ("socket", &[AF_ALG, 5], EPERM_RET),
            ("socket", &[AF_VSOCK, 1], EPERM_RET),
            ("socket", &[HIGH | AF_ALG, 5], EPERM_RET),
            ("personality", &[0xffff_ffff], ALLOW),
            ("personality", &[0x0002_0008], ALLOW),
            (
                "personality",
                &[0x0040_0000 /* ADDR_NO_RANDOMIZE */],
                EPERM_RET,
            ),
            ("keyctl", &[], EPERM_RET),
            ("bpf", &[], EPERM_RET),
            ("mount", &[], EPERM_RET),
            ("unshare", &[], EPERM_RET),
            ("setns", &[], EPERM_RET),
            ("io_uring_setup", &[], EPERM_RET),
        ];
        for (name, args, want) in cases {
            assert_eq!(call(name, args), *want, "{arch:?} {name} {args:x?}");
        }
        for value in PERSONALITY_ALLOWED {
            assert_eq!(call("personality", &[value]), ALLOW, "{value:#x}");
        }
    }
}

#[test]
fn the_x32_abi_is_refused_with_the_default_errno() {
    let filter = default_filter(Arch::X86_64);
    let prog = compile(&filter).unwrap();
    for nr in [
        0x4000_0000u32,
        0x4000_0001,
        0x4000_0000 | 59,
        0x4000_0000 | 512,
    ] {
        assert_eq!(run(&prog, &data(&filter, nr, [0; 6])), EPERM_RET, "{nr:#x}");
    }
}

#[test]
fn a_foreign_architecture_is_killed() {
    let filter = default_filter(Arch::X86_64);
    let prog = compile(&filter).unwrap();
    let read32 = Data {
        nr: 3, // read on i386
        arch: AUDIT_ARCH_I386,
        args: [0; 6],
    };
    assert_eq!(run(&prog, &read32), SECCOMP_RET_KILL_PROCESS);
    assert_eq!(prog[0], Insn::stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH));
}

#[test]
fn the_default_x86_64_program_is_small() {
    let mut counts = Vec::new();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let prog = compile(&default_filter(arch)).unwrap();
        println!("default filter on {arch:?}: {} instructions", prog.len());
        counts.push(prog.len());
    }
    // seccompiler 0.5 emitted 1,486 for x86_64. Here: 4 for the architecture check and
    // the load of the number, one jge per boundary between intervals (65 on x86_64), 13
    // for the argument blocks, 3 returns: 85. The bound leaves room for a few more rules.
    assert!(counts[0] <= 120, "x86_64: {}", counts[0]);
    assert!(counts[1] <= 120, "aarch64: {}", counts[1]);
}

#[test]
fn unconditionally_allowed_syscalls_pass_the_kernels_constant_action_emulation() {
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let filter = default_filter(arch);
        let prog = compile(&filter).unwrap();
        for &(name, number) in syscalls::table(arch) {
            let unconditional = filter
                .allow
                .iter()
                .any(|r| r.name == name && r.args.is_empty());
            let d = data(&filter, number, [0; 6]);
            let constant = execute(&prog, &d, true);
            if unconditional {
                assert_eq!(constant, Some(ALLOW), "{arch:?} {name}");
            } else {
                assert_ne!(constant, Some(ALLOW), "{arch:?} {name}");
            }
        }
    }
}

#[test]
fn profile_additions_and_removals_compile_to_the_same_meaning() {
    let extra = SeccompRules {
        allow: vec![
            "ptrace".parse().unwrap(),
            "process_vm_readv".parse().unwrap(),
        ],
        deny: vec![
            "ioctl".parse().unwrap(),
            "chroot".parse().unwrap(),
            "personality".parse().unwrap(),
        ],
    };
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let filter = box_filter(arch, &extra);
        let prog = compile(&filter).unwrap();
        assert_equivalent(&filter, &prog);
        let call = |name| run(&prog, &data(&filter, nr(arch, name), [0; 6]));
        assert_eq!(call("ptrace"), ALLOW);
        assert_eq!(call("ioctl"), EPERM_RET);
        assert_eq!(call("personality"), EPERM_RET);
    }
}

fn rule(name: &str, args: &[(u8, ArgOp)]) -> AllowRule {
    AllowRule {
        name: name.into(),
        args: args
            .iter()
            .map(|&(index, op)| ArgCheck { index, op })
            .collect(),
    }
}

#[test]
fn rules_of_one_name_are_alternatives_and_checks_of_one_rule_all_hold() {
    let filter = Filter {
        arch: Arch::X86_64,
        allow: vec![
            // fcntl(fd, F_GETFL) or fcntl(3, F_SETFD, FD_CLOEXEC).
            rule("fcntl", &[(1, ArgOp::Eq(3))]),
            rule(
                "fcntl",
                &[(0, ArgOp::Eq(3)), (1, ArgOp::Eq(2)), (2, ArgOp::Eq(1))],
            ),
            // Masks with a non-zero value, a full mask, and a mask on another argument.
            rule(
                "mmap",
                &[
                    (
                        2,
                        ArgOp::MaskedEq {
                            mask: 0x6,
                            value: 0x2,
                        },
                    ),
                    (
                        3,
                        ArgOp::MaskedEq {
                            mask: 0xffff_ffff,
                            value: 0x22,
                        },
                    ),
                ],
            ),
            rule("mmap", &[(5, ArgOp::Ne(0)), (2, ArgOp::Eq(0))]),
            // The same rules under two names share one block.
            rule("write", &[(0, ArgOp::Eq(1))]),
            rule("writev", &[(0, ArgOp::Eq(1))]),
            // Narrowed, then widened again by a rule without checks.
            rule("read", &[(0, ArgOp::Eq(0))]),
            rule("read", &[]),
            // In both lists: ENOSYS wins, as with the two programs of old.
            rule("clone3", &[]),
        ],
        default_errno: 13,
        enosys: vec!["clone3".into(), "getpid".into()],
    };
    let prog = compile(&filter).unwrap();
    assert_equivalent(&filter, &prog);
    let call = |name, args: [u64; 6]| run(&prog, &data(&filter, nr(Arch::X86_64, name), args));
    let eacces = SECCOMP_RET_ERRNO | 13;
    assert_eq!(call("fcntl", [9, 3, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call("fcntl", [3, 2, 1, 0, 0, 0]), ALLOW);
    assert_eq!(call("fcntl", [3, 2, 0, 0, 0, 0]), eacces);
    assert_eq!(call("mmap", [0, 0, 0x3, 0x22, 0, 0]), ALLOW);
    assert_eq!(call("mmap", [0, 0, 0x7, 0x22, 0, 0]), eacces);
    assert_eq!(call("mmap", [0, 0, 0x3, 0x1_0000_0022, 0, 0]), ALLOW);
    assert_eq!(call("mmap", [0, 0, 0, 0, 0, 1]), ALLOW);
    assert_eq!(call("mmap", [0, 0, 0, 0, 0, 1 << 32]), eacces);
    assert_eq!(call("write", [1, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call("writev", [2, 0, 0, 0, 0, 0]), eacces);
    assert_eq!(call("read", [7, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call("clone3", [0; 6]), ENOSYS_RET);
    assert_eq!(call("getpid", [0; 6]), ENOSYS_RET);
    assert_eq!(call("getppid", [0; 6]), eacces);
}

#[test]
fn far_branches_go_through_trampolines() {
    // Every other syscall checked on its argument: about 190 blocks after a tree of about
    // 375 comparisons, so the tree cannot reach most blocks, nor the blocks the returns,
    // with 8-bit offsets.
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let allow: Vec<AllowRule> = syscalls::table(arch)
            .iter()
            .filter(|(_, n)| n % 2 == 0)
            .map(|&(name, n)| rule(name, &[(0, ArgOp::Eq(u64::from(n)))]))
            .chain(
                syscalls::table(arch)
                    .iter()
                    .filter(|(_, n)| n % 4 == 1)
                    .map(|&(name, _)| rule(name, &[])),
            )
            .collect();
        let filter = Filter {
            arch,
            allow,
            default_errno: EPERM,
            enosys: vec!["clone3".into()],
        };
        let prog = compile(&filter).unwrap();
        let trampolines = prog.iter().filter(|i| i.code == BPF_JMP | BPF_JA).count();
        assert!(trampolines > 0, "{arch:?}: no trampoline in {}", prog.len());
        assert!(prog.len() > 256 + 255, "{arch:?}: {}", prog.len());
        assert_equivalent(&filter, &prog);
        for &(name, n) in syscalls::table(arch) {
            let args = [u64::from(n), 0, 0, 0, 0, 0];
            let want = match (name, n % 4) {
                ("clone3", _) => ENOSYS_RET,
                (_, 0..=2) => ALLOW,
                _ => EPERM_RET,
            };
            assert_eq!(run(&prog, &data(&filter, n, args)), want, "{name}");
        }
    }
}

#[test]
fn a_program_over_the_kernel_limit_is_refused() {
    let allow = (0..5000u64)
        .map(|v| rule("personality", &[(0, ArgOp::Eq(v))]))
        .collect();
    let filter = Filter {
        arch: Arch::X86_64,
        allow,
        default_errno: EPERM,
        enosys: vec![],
    };
    assert!(matches!(compile(&filter), Err(BpfError::TooLong { len }) if len > 4096));
    // Each of these rules costs a comparison and, for all but the last few, a trampoline
    // to the shared `ret`: 1,500 of them fit.
    let mut filter = filter;
    filter.allow.truncate(1500);
    let prog = compile(&filter).unwrap();
    validate(&prog);
    assert!(prog.len() > 2 * 1500 - 300, "{}", prog.len());
    let personality = nr(Arch::X86_64, "personality");
    for (v, want) in [
        (0, ALLOW),
        (1499, ALLOW),
        (1500, EPERM_RET),
        (HIGH | 17, ALLOW),
    ] {
        let d = data(&filter, personality, [v, 0, 0, 0, 0, 0]);
        assert_eq!(run(&prog, &d), want, "{v:#x}");
    }
}

#[test]
fn invalid_filters_are_compile_errors() {
    let base = default_filter(Arch::Aarch64);
    let with = |r: AllowRule| {
        let mut f = base.clone();
        f.allow.push(r);
        compile(&f).unwrap_err()
    };
    assert_eq!(
        with(rule("open", &[])),
        BpfError::UnknownSyscall {
            name: "open".into(),
            arch: Arch::Aarch64
        }
    );
    assert_eq!(
        with(rule("read", &[(6, ArgOp::Eq(0))])),
        BpfError::ArgIndex {
            name: "read".into(),
            index: 6
        }
    );
    assert_eq!(
        with(rule("read", &[(0, ArgOp::Ne(1 << 32))])),
        BpfError::WideValue {
            name: "read".into(),
            value: 1 << 32
        }
    );
    let mut f = base.clone();
    f.enosys.push("no_such_call".into());
    assert!(
        matches!(compile(&f), Err(BpfError::UnknownSyscall { name, .. }) if name == "no_such_call")
    );
    let mut f = base;
    f.default_errno = 0;
    assert_eq!(compile(&f).unwrap_err(), BpfError::Errno(0));
}

#[test]
fn error_messages_are_lowercase_and_name_the_culprit() {
    let e = BpfError::UnknownSyscall {
        name: "frobnicate".into(),
        arch: Arch::X86_64,
    };
    assert_eq!(e.to_string(), "\"frobnicate\" is not a syscall on X86_64");
}
