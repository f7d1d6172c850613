use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use policy::apparmor::{profile_name, render};
use policy::UserName;

use super::*;

/// The real parser. scripts/install-deps installs it, so its absence fails the test.
fn real_parser() -> Parser {
    assert!(
        Path::new(Parser::DEFAULT_PATH).exists(),
        "{} is missing: run scripts/install-deps (package apparmor)",
        Parser::DEFAULT_PATH
    );
    Parser::new(Parser::DEFAULT_PATH, Path::new("/sys"))
}

fn user(s: &str) -> UserName {
    s.parse().unwrap()
}

/// A login unique to this test and run: `a<pid>x<n>`, at most 12 characters.
fn unique_login() -> UserName {
    let login = format!("a{}x{}", std::process::id(), crate::testing::unique());
    assert!(login.len() <= UserName::MAX_LEN, "{login} is too long");
    user(&login)
}

/// Unloads its profile when dropped, also when the test panics.
struct LoadedProfile<'a> {
    parser: &'a Parser,
    name: String,
}

impl Drop for LoadedProfile<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.parser.unload(&self.name) {
            eprintln!("cannot unload test profile {}: {err:?}", self.name);
        }
    }
}

/// A stand-in `apparmor_parser` in `dir`: records its arguments, environment and stdin
/// there, prints `stderr` to stderr and exits with `code`.
fn stand_in(dir: &Path, stderr: &str, code: i32) -> PathBuf {
    let path = dir.join("apparmor_parser");
    let d = dir.display();
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {d}/args\nenv > {d}/env\ncat > {d}/stdin\n\
             printf '%s\\n' '{stderr}' >&2\nexit {code}\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// --- kernel_enabled ------------------------------------------------------------------

/// A fake `/sys`: the module parameter (if `param` is given) and the apparmorfs (if `fs`).
fn fake_sys(param: Option<&str>, fs: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    if let Some(value) = param {
        let dir = root.path().join("module/apparmor/parameters");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("enabled"), value).unwrap();
    }
    if fs {
        fs::create_dir_all(apparmorfs(root.path())).unwrap();
    }
    root
}

#[test]
fn apparmor_is_enabled_when_the_module_says_y_and_its_filesystem_is_there() {
    assert!(kernel_enabled(fake_sys(Some("Y\n"), true).path()));
}

#[test]
fn apparmor_is_disabled_when_the_module_says_n() {
    assert!(!kernel_enabled(fake_sys(Some("N\n"), true).path()));
}

#[test]
fn apparmor_is_disabled_when_the_module_parameter_is_missing() {
    assert!(!kernel_enabled(fake_sys(None, true).path()));
}

#[test]
fn apparmor_is_disabled_when_its_filesystem_is_missing() {
    assert!(!kernel_enabled(fake_sys(Some("Y\n"), false).path()));
}

#[test]
fn apparmor_is_disabled_when_nothing_is_there() {
    assert!(!kernel_enabled(fake_sys(None, false).path()));
}

// --- the parser, real and stand-in ------------------------------------------------------

#[test]
fn rendered_box_profiles_compile_with_the_real_apparmor_parser() {
    let parser = real_parser();
    for login in ["alice", "b", "dev-1", "x_y", "abcdefghijkl"] {
        let text = render(&user(login));
        if let Err(err) = parser.check(&text) {
            panic!("profile for {login} does not compile: {err}\n{text}");
        }
    }
}

#[test]
fn a_broken_profile_fails_the_check_with_the_parsers_message() {
    let parser = real_parser();
    let err = parser
        .check("profile orchestratord-box-broken {\n  this is not a rule,\n}\n")
        .unwrap_err();
    let AppArmorError::Parser {
        op, status, stderr, ..
    } = &err
    else {
        panic!("expected a parser error, got {err:?}");
    };
    assert_eq!(*op, "check");
    assert!(!status.success());
    // The parser names the line of the profile text it was fed on stdin.
    assert!(stderr.contains("line 2"), "stderr: {stderr}");
    assert!(err.to_string().contains(stderr.as_str()), "{err}");
}

#[test]
fn the_parser_runs_with_a_cleared_environment_and_the_profile_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let parser = Parser::new(stand_in(dir.path(), "", 0), Path::new("/sys"));
    let text = render(&user("alice"));

    parser.check(&text).unwrap();
    let args = fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args, "-Q\n-K\n");
    assert_eq!(fs::read_to_string(dir.path().join("stdin")).unwrap(), text);
    let env = fs::read_to_string(dir.path().join("env")).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        // What sh itself sets up.
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
        .collect();
    assert_eq!(names, ["PATH"], "environment: {env}");

    parser.load(&text).unwrap();
    let args = fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args, "-r\n-K\n-f\n/sys/kernel/security/apparmor\n");
    assert_eq!(fs::read_to_string(dir.path().join("stdin")).unwrap(), text);
}

#[test]
fn a_failing_parser_is_reported_with_its_exit_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let parser = Parser::new(stand_in(dir.path(), "no such abi", 3), Path::new("/sys"));
    let err = parser.load("profile x {}\n").unwrap_err();
    let AppArmorError::Parser {
        op, status, stderr, ..
    } = &err
    else {
        panic!("expected a parser error, got {err:?}");
    };
    assert_eq!(
        (*op, status.code(), stderr.as_str()),
        ("load", Some(3), "no such abi")
    );
}

#[test]
fn a_missing_parser_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("apparmor_parser");
    let err = Parser::new(&missing, Path::new("/sys"))
        .check("profile x {}\n")
        .unwrap_err();
    assert!(
        matches!(&err, AppArmorError::Spawn { op: "check", path, .. } if *path == missing),
        "{err:?}"
    );
}

// --- apparmorfs: loaded profiles and removal ----------------------------------------

#[test]
fn loaded_profiles_are_read_from_the_apparmorfs_list() {
    let sys = fake_sys(Some("Y\n"), true);
    fs::write(
        apparmorfs(sys.path()).join("profiles"),
        "orchestratord-box-alice (enforce)\n/usr/sbin/cupsd (complain)\nman_filter (enforce)\n",
    )
    .unwrap();
    let parser = Parser::new(Parser::DEFAULT_PATH, sys.path());
    assert_eq!(
        parser.loaded().unwrap(),
        ["orchestratord-box-alice", "/usr/sbin/cupsd", "man_filter"]
    );
}

#[test]
fn unloading_writes_exactly_the_profile_name_to_remove() {
    let sys = fake_sys(Some("Y\n"), true);
    let remove = apparmorfs(sys.path()).join(".remove");
    fs::write(&remove, "").unwrap();
    Parser::new(Parser::DEFAULT_PATH, sys.path())
        .unload("orchestratord-box-alice")
        .unwrap();
    assert_eq!(
        fs::read_to_string(&remove).unwrap(),
        "orchestratord-box-alice"
    );
}

#[test]
fn unloading_without_an_apparmorfs_is_an_error() {
    let sys = fake_sys(None, false);
    let err = Parser::new(Parser::DEFAULT_PATH, sys.path())
        .unload("orchestratord-box-alice")
        .unwrap_err();
    assert!(matches!(err, AppArmorError::Remove { .. }), "{err:?}");
}

#[test]
fn names_that_could_smuggle_a_second_command_or_namespace_are_refused() {
    let sys = fake_sys(Some("Y\n"), true);
    let remove = apparmorfs(sys.path()).join(".remove");
    fs::write(&remove, "").unwrap();
    let parser = Parser::new(Parser::DEFAULT_PATH, sys.path());
    for name in [
        "",
        "a\nb",
        ":ns:box",
        "a//&b",
        "a b",
        "-x",
        "/usr/bin/x",
        &"a".repeat(MAX_PROFILE_NAME + 1),
    ] {
        let err = parser.unload(name).unwrap_err();
        assert!(matches!(err, AppArmorError::ProfileName(_)), "{name:?}");
        let err = exec_transition_at(sys.path(), name).unwrap_err();
        assert!(matches!(err, AppArmorError::ProfileName(_)), "{name:?}");
    }
    assert_eq!(
        fs::read_to_string(&remove).unwrap(),
        "",
        "something was written"
    );
}

// --- the kernel ---------------------------------------------------------------------

#[test]
fn a_loaded_box_profile_is_listed_by_the_kernel_until_it_is_unloaded() {
    let parser = real_parser();
    let login = unique_login();
    let name = profile_name(&login);
    let text = render(&login);
    if !kernel_enabled(Path::new("/sys")) {
        // Loading must fail loudly here, never pretend to have confined anything.
        let err = parser.load(&text).unwrap_err();
        assert!(
            matches!(&err, AppArmorError::Parser { op: "load", .. }),
            "{err:?}"
        );
        crate::testing::skip("apparmor", "kernel lacks AppArmor");
        return;
    }
    let guard = LoadedProfile {
        parser: &parser,
        name: name.clone(),
    };
    parser.load(&text).unwrap();
    assert!(
        parser.loaded().unwrap().contains(&name),
        "{name} not listed"
    );
    // Loading again replaces it in place.
    parser.load(&text).unwrap();
    parser.unload(&name).unwrap();
    assert!(
        !parser.loaded().unwrap().contains(&name),
        "{name} still listed"
    );
    // Unloading what is not loaded is not an error (reconciliation relies on it).
    parser.unload(&name).unwrap();
    drop(guard);
}

#[test]
fn a_write_that_does_not_reach_the_kernel_is_not_taken_for_a_transition() {
    // A /proc/thread-self that is not procfs: the write lands in a plain file.
    let fake = tempfile::tempdir().unwrap();
    fs::create_dir_all(fake.path().join("attr/apparmor")).unwrap();
    let modern = fake.path().join("attr/apparmor/exec");
    fs::write(&modern, "").unwrap();
    let err = exec_transition_at(fake.path(), "orchestratord-box-alice").unwrap_err();
    assert!(
        matches!(&err, AppArmorError::ExecNotRecorded { path, .. } if *path == modern),
        "{err:?}"
    );
    assert_eq!(
        fs::read_to_string(&modern).unwrap(),
        "exec orchestratord-box-alice"
    );
}

#[test]
fn kernels_without_per_lsm_attributes_get_the_older_exec_attribute() {
    let fake = tempfile::tempdir().unwrap();
    fs::create_dir_all(fake.path().join("attr")).unwrap();
    let old = fake.path().join("attr/exec");
    fs::write(&old, "").unwrap();
    let err = exec_transition_at(fake.path(), "orchestratord-box-alice").unwrap_err();
    assert!(
        matches!(&err, AppArmorError::ExecNotRecorded { path, .. } if *path == old),
        "{err:?}"
    );
    assert_eq!(
        fs::read_to_string(&old).unwrap(),
        "exec orchestratord-box-alice"
    );
}

#[test]
fn asking_for_a_profile_the_kernel_cannot_apply_is_reported_as_an_error() {
    // Without AppArmor the kernel refuses the write (EINVAL); with it, the profile is not
    // loaded (ENOENT). Either way nothing changes for this thread, and the caller hears of it.
    let name = profile_name(&unique_login());
    let err = exec_transition(&name).unwrap_err();
    let AppArmorError::ExecAttr {
        profile, source, ..
    } = &err
    else {
        panic!("expected the attribute write to fail, got {err:?}");
    };
    assert_eq!(profile, &name);
    let expected = if kernel_enabled(Path::new("/sys")) {
        ErrorKind::NotFound
    } else {
        ErrorKind::InvalidInput
    };
    assert_eq!(source.kind(), expected, "{err:?}");
}

/// Runs inside the re-executed child: asks for `profile` on exec, then execs a shell that
/// reports its own label and whether it can read a file the profile denies.
fn probe(profile: &str) {
    exec_transition(profile).unwrap();
    let err = Command::new("/bin/sh")
        .args([
            "-c",
            "echo \"label=$(cat /proc/self/attr/current)\"; \
             if cat /sys/kernel/security/apparmor/profiles >/dev/null 2>&1; \
             then echo securityfs=readable; else echo securityfs=denied; fi",
        ])
        .exec();
    panic!("exec failed: {err}");
}

#[test]
fn a_process_execs_confined_by_its_box_profile() {
    const NAME: &str = "runtime::apparmor::tests::a_process_execs_confined_by_its_box_profile";
    if let Some(profile) = std::env::var_os("ORCHD_APPARMOR_PROBE") {
        return probe(&profile.to_string_lossy());
    }
    if !kernel_enabled(Path::new("/sys")) {
        crate::testing::skip("apparmor", "kernel lacks AppArmor");
        return;
    }
    let parser = real_parser();
    let login = unique_login();
    let name = profile_name(&login);
    let _guard = LoadedProfile {
        parser: &parser,
        name: name.clone(),
    };
    parser.load(&render(&login)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("ORCHD_APPARMOR_PROBE", &name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains(&format!("label={name} (enforce)")),
        "child not confined:\n{report}"
    );
    assert!(
        stdout.contains("securityfs=denied"),
        "profile not enforced:\n{report}"
    );
}
