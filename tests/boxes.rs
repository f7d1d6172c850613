//! The box runtime against the real kernel, as root: boxes started through
//! `runtime::boxes` with the built helper and init, commands run in them through the exec
//! helper. Every box lives under a cgroup subtree and a state directory unique to the test
//! run, removed on drop, also when an assertion fails.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use orchestratord::runtime::boxes::{Binaries, BoxRuntime, Command, ExecRequest, Outcome, Running};
use orchestratord::runtime::cgroup::Cgroups;
use orchestratord::runtime::seccomp::{self, Compiled};
use policy::plan::{BoxPlan, PlanUser};
use policy::seccomp::{box_filter, Arch};
use policy::{Config, ProfileSet, Role};

const HELPER: &str = env!("CARGO_BIN_EXE_orchestratord-helper");
const INIT: &str = env!("CARGO_BIN_EXE_orchestratord-init");

struct Lab {
    dir: tempfile::TempDir,
    rt: BoxRuntime,
    cgroups: Cgroups,
    boxes: Vec<(BoxPlan, Option<Running>)>,
}

impl Lab {
    fn new() -> Lab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "box tests run as root (scripts/test runs them as root)"
        );
        orchestratord::runtime::boxes::become_subreaper().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("orchd-box-")
            .tempdir()
            .unwrap();
        let subtree = format!(
            "orchd-boxtest-{}-{}",
            std::process::id(),
            orchestratord::testing::unique()
        );
        let cgroups = Cgroups::detect(&subtree).unwrap();
        let rt = BoxRuntime::new(
            Binaries {
                helper: HELPER.into(),
                init: INIT.into(),
            },
            cgroups.clone(),
            dir.path().join("state"),
        );
        Lab {
            dir,
            rt,
            cgroups,
            boxes: vec![],
        }
    }

    fn plan(&self, login: &str, profile: &str, role: Role, slot: u32) -> BoxPlan {
        let config = Config {
            state_dir: self.dir.path().join("state"),
            ..Default::default()
        };
        let user = PlanUser {
            name: login.parse().unwrap(),
            uid: 20_000 + slot,
            gid: 20_000 + slot,
            role,
            disabled: false,
            slot,
            services: BTreeSet::new(),
        };
        let set = ProfileSet::builtin();
        policy::plan::compile(&config, &user, set.get(profile).unwrap(), &[]).unwrap()
    }

    fn seccomp(plan: &BoxPlan) -> Compiled {
        seccomp::compile(&box_filter(Arch::native().unwrap(), &plan.seccomp)).unwrap()
    }

    /// Starts a box and returns its index.
    fn start(&mut self, plan: BoxPlan) -> usize {
        let compiled = Self::seccomp(&plan);
        let out = self.rt.run(Command::Start {
            plan: &plan,
            seccomp: &compiled,
        });
        let running = match out {
            Ok(Outcome::Started(r)) => r,
            other => {
                let log = std::fs::read_to_string(self.rt.paths(plan.user.as_str()).log)
                    .unwrap_or_default();
                panic!("start failed: {other:?}\nbox log:\n{log}");
            }
        };
        self.boxes.push((plan, Some(running)));
        self.boxes.len() - 1
    }

    fn exec(&self, i: usize, argv: &[&str]) -> Output {
        self.exec_with(i, argv, b"")
    }

    fn exec_with(&self, i: usize, argv: &[&str], input: &[u8]) -> Output {
        let (plan, running) = &self.boxes[i];
        let compiled = Self::seccomp(plan);
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (mut cmd, framed) = self
            .rt
            .exec_command(plan, running.as_ref().unwrap(), &compiled, &req)
            .unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&framed).unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    fn stop(&mut self, i: usize) {
        let (plan, running) = &mut self.boxes[i];
        self.rt
            .run(Command::Stop {
                cgroup: &plan.cgroup,
                running: running.take(),
                grace: Duration::from_secs(2),
            })
            .unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (plan, running) in &mut self.boxes {
            let _ = self.rt.run(Command::Stop {
                cgroup: &plan.cgroup,
                running: running.take(),
                grace: Duration::from_millis(100),
            });
        }
        let _ = self.rt.run(Command::Sweep {
            known: &BTreeSet::new(),
        });
        for base in self.cgroups.bases() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_member_box_starts_runs_a_command_as_the_user_and_stops_without_residue() {
    let mut lab = Lab::new();
    let plan = lab.plan("alice", "homelabber", Role::Member, 1);
    let cg = plan.cgroup.clone();
    let i = lab.start(plan);
    let out = lab.exec(
        i,
        &["sh", "-c", "id -u; id -g; hostname; cat /etc/passwd; pwd"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "20001", "{stdout}");
    assert_eq!(lines[1], "20001");
    assert_eq!(lines[2], "alice");
    assert!(stdout.contains("alice:x:20001:20001"));
    assert_eq!(*lines.last().unwrap(), "/home/alice");

    let code = lab.exec(i, &["sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));
    let missing = lab.exec(i, &["no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing));

    lab.stop(i);
    let cgb = lab.cgroups.boxed(&cg).unwrap();
    assert!(!cgb.exists(), "cgroup left behind");
}
