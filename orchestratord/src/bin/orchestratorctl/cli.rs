//! The command line, as clap definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::client::Secret;

pub const LONG_ABOUT: &str = "\
Admin CLI for orchestratord.

Talks to the daemon over its root-only Unix socket by default, or to an http:// URL with a \
token. Connection options (--socket, --url, --token, --token-file, --timeout) go before the \
command; --json may go anywhere. --url takes precedence over --socket, and --token-file over \
--token.";

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (`service check`: access allowed)
  1  API error, access denied by `service check`, or another failure
  2  usage error: bad arguments
  3  daemon unreachable: cannot connect, no answer, or the connection broke
  4  not found (HTTP 404)
  5  unauthorized or forbidden (HTTP 401, 403)
`exec` exits with the command's own exit code once the command ran (124: it timed out);
`shell` with the shell's exit status, or 0 when detached.

Errors are one line on stderr: `error: <message> (<kind>)`.";

#[derive(Debug, Parser)]
#[command(
    name = "orchestratorctl",
    version,
    about = "Admin CLI for orchestratord"
)]
#[command(long_about = LONG_ABOUT, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Print the daemon's JSON response, pretty-printed, instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnArgs {
    /// The daemon's Unix socket
    #[arg(long, env = "ORCHESTRATOR_SOCKET", value_name = "PATH")]
    #[arg(default_value = "/run/orchestratord/orchestratord.sock")]
    pub socket: PathBuf,
    /// Talk to http://HOST:PORT instead of the socket (needs a token; no https)
    #[arg(long, env = "ORCHESTRATOR_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token (prefer --token-file: arguments are visible to other local users)
    #[arg(
        long,
        env = "ORCHESTRATOR_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,
    /// Read the bearer token from this file
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Give up when the daemon has not answered within this span
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage users
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// Manage the service registry and check access
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Read the audit log, newest first
    Audit(AuditArgs),
    /// Read and write a user's desktop state (JSON values by key)
    #[command(subcommand)]
    State(StateCmd),
    /// Manage users' boxes
    #[command(subcommand, name = "box")]
    Boxes(BoxCmd),
    /// Run a command in a user's running box; exits with the command's exit code
    Exec(ExecArgs),
    /// Open an interactive terminal in a user's running box (Ctrl-] detaches); exits with
    /// the shell's exit status
    Shell(ShellArgs),
    /// Show users' box networks
    #[command(subcommand)]
    Net(NetCmd),
    /// Files in a user's home (paths relative to the home)
    #[command(subcommand)]
    Files(FilesCmd),
    /// Print a shell completion script to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A comma-separated list of service names; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct ServiceList(pub Vec<String>);

impl std::str::FromStr for ServiceList {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let names = s.split(',').map(str::trim).filter(|n| !n.is_empty());
        Ok(Self(names.map(str::to_owned).collect()))
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user
    Add {
        email: String,
        /// Login name (the daemon derives it from the email by default)
        #[arg(long)]
        login: Option<String>,
        /// Display name (default: the part of the email before '@')
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        role: String,
        /// OS profile
        #[arg(long)]
        profile: String,
        /// Services, comma-separated
        #[arg(long, value_name = "A,B")]
        services: Option<ServiceList>,
    },
    /// List users
    List {
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        profile: Option<String>,
        /// Only disabled users
        #[arg(long, conflicts_with = "enabled")]
        disabled: bool,
        /// Only enabled users
        #[arg(long)]
        enabled: bool,
    },
    /// Show one user (by login or email)
    Show { user: String },
    /// Change a user; only the given fields change
    Set(UserSet),
    /// Delete a user, their tokens and desktop state
    Rm { user: String },
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("change").required(true).multiple(true))]
pub struct UserSet {
    pub user: String,
    #[arg(long, group = "change")]
    pub name: Option<String>,
    #[arg(long, group = "change")]
    pub role: Option<String>,
    #[arg(long, group = "change")]
    pub profile: Option<String>,
    /// Services, comma-separated; '' clears the list
    #[arg(long, group = "change", value_name = "A,B")]
    pub services: Option<ServiceList>,
    #[arg(long, group = "change", conflicts_with = "enable")]
    pub disable: bool,
    #[arg(long, group = "change")]
    pub enable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Admin,
    User,
    Service,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; the secret is shown once, alone on stdout
    Create {
        #[arg(long, value_enum)]
        kind: TokenKind,
        /// The user a `user` token acts for (required for --kind user)
        #[arg(long, required_if_eq("kind", "user"))]
        user: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 90d (the daemon's default is 90d)
        #[arg(long, value_name = "SPAN")]
        expires: Option<String>,
    },
    /// List tokens (never their secrets)
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Register a service
    Add {
        name: String,
        /// The URL users open
        #[arg(long)]
        url: String,
        #[arg(long, value_name = "HOST:PORT")]
        upstream: String,
        #[arg(long, default_value = "apps")]
        category: String,
        /// The least role that may use it
        #[arg(long, default_value = "member")]
        role: String,
        /// A user who owns it
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        icon: Option<String>,
    },
    /// List the registry, or what one user may use
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Remove a service from the registry
    Rm { name: String },
    /// Print whether USER may use SERVICE; exits 0 if allowed, 1 if denied
    Check { user: String, service: String },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub user: Option<String>,
    /// e.g. user.create, auth.failure
    #[arg(long)]
    pub action: Option<String>,
    /// ok, denied, invalid or error
    #[arg(long)]
    pub outcome: Option<String>,
    /// RFC 3339 time, Unix seconds, or a span back from now such as 2h or 7d
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Same forms as --since
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many entries (the daemon's default is 100, its maximum 1000)
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue after an earlier page: the `next` id it printed
    #[arg(long, value_name = "ID")]
    pub before: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// Print all of a user's state, or one key's value
    Get { user: String, key: Option<String> },
    /// Set a key to VALUE, which is JSON text ('-' reads it from stdin)
    Set {
        user: String,
        key: String,
        value: String,
    },
    /// Delete a key
    Rm { user: String, key: String },
}

#[derive(Debug, Subcommand)]
pub enum FilesCmd {
    /// List a directory (every page)
    Ls {
        user: String,
        #[arg(default_value = "/")]
        path: String,
        /// Include names starting with '.'
        #[arg(short, long)]
        all: bool,
        /// name, size or mtime
        #[arg(long)]
        sort: Option<String>,
        /// Largest first (descending)
        #[arg(short, long)]
        reverse: bool,
    },
    /// Download REMOTE to LOCAL ('-' writes it to stdout)
    Get {
        user: String,
        remote: String,
        local: String,
    },
    /// Upload LOCAL ('-' reads stdin) to REMOTE
    Put {
        user: String,
        local: String,
        remote: String,
        /// Replace an existing file
        #[arg(long)]
        overwrite: bool,
        /// Octal permission bits of the new file (default 644)
        #[arg(long)]
        mode: Option<String>,
    },
    /// Delete files, symlinks or directories
    Rm {
        user: String,
        #[arg(required = true)]
        paths: Vec<String>,
        /// Delete non-empty directories with their contents
        #[arg(short, long)]
        recursive: bool,
    },
    /// Rename SRC to DST, or move several SRC into the directory DST
    Mv {
        user: String,
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
        /// Replace an existing target
        #[arg(long)]
        overwrite: bool,
    },
    /// Copy SRC to DST, or several SRC into the directory DST
    Cp {
        user: String,
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
        /// Copy directories with their contents (symlinks stay symlinks; FIFOs, sockets
        /// and devices are left out)
        #[arg(short, long)]
        recursive: bool,
        /// Replace an existing file (a directory never replaces anything)
        #[arg(long)]
        overwrite: bool,
    },
    /// Create directories
    Mkdir {
        user: String,
        #[arg(required = true)]
        paths: Vec<String>,
        /// Create missing parents; existing directories are fine
        #[arg(short, long)]
        parents: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetCmd {
    /// A user's effective network policy: subnet, address, packet counters, the rules in
    /// words and in nft syntax
    Show { user: String },
}

#[derive(Debug, Subcommand)]
pub enum BoxCmd {
    /// List boxes
    List {
        /// absent, starting, running, stopping, stopped or error
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        role: Option<String>,
    },
    /// Show one box: state, limits and current usage
    Status { user: String },
    /// Start a user's box
    Start { user: String },
    /// Stop a user's box
    Stop { user: String },
    /// Stop and start a user's box
    Restart { user: String },
    /// Wipe the box's persistent changes; a running box restarts on a clean root
    Reset { user: String },
    /// Stop the box and delete its files (not the home)
    Rm { user: String },
    /// Print the tail of a box's log
    Logs {
        user: String,
        /// How many lines from the end
        #[arg(long, default_value_t = 100)]
        lines: u32,
    },
    /// Start, stop or restart every box a filter selects; exits 1 if any failed
    Bulk {
        #[arg(value_enum)]
        action: BulkAction,
        /// Only boxes in this state
        #[arg(long)]
        state: Option<String>,
        /// Only boxes of users with this role
        #[arg(long)]
        role: Option<String>,
        /// Only boxes of users with this OS profile
        #[arg(long)]
        profile: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    Start,
    Stop,
    Restart,
}

/// `shell`: an interactive terminal (Ctrl-] detaches).
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Attach to this running session instead of opening a new one
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Watch without input (needs --session)
    #[arg(long, requires = "session")]
    pub read_only: bool,
    pub user: String,
}

/// `exec`: options come before USER; everything after USER (or after `--`) is the command,
/// so `exec alice ls -la` and `exec alice -- sh -c 'exit 3'` both work and options meant
/// for the command are never taken as ours.
#[derive(Debug, Args)]
#[command(override_usage = "orchestratorctl exec [OPTIONS] <USER> [--] <CMD> [ARGS]...")]
#[command(after_help = "\
The command's stdout and stderr are shown as they arrive. orchestratorctl exits with the \
command's exit code (128+N when a signal N killed it, 124 when it timed out); failures \
before the command runs use orchestratorctl's own exit codes. With --json the daemon's \
NDJSON stream is printed as it is.")]
pub struct ExecArgs {
    /// Kill the command after this many seconds (the daemon's default is 60, its maximum
    /// 3600)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Set a variable in the command's environment (repeatable)
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the box (default: the home)
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Read all of stdin (UTF-8 text) and give it to the command
    #[arg(long)]
    pub stdin: bool,
    pub user: String,
    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `K=V` as a pair; the value may be empty and may hold `=`, the name may not.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    /// Parses a command line given as one string; `''` stands for an empty argument.
    pub fn parse(args: &str) -> Result<Cli, clap::Error> {
        let args = args
            .split_whitespace()
            .map(|a| if a == "''" { "" } else { a });
        Cli::try_parse_from(std::iter::once("orchestratorctl").chain(args))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn user_add_takes_services_as_a_comma_separated_list() {
        let cli = parse("user add a@b.c --role member --profile media --services jellyfin,,git,")
            .unwrap();
        let Command::User(UserCmd::Add { services, name, .. }) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(
            services,
            Some(ServiceList(vec!["jellyfin".into(), "git".into()]))
        );
        assert_eq!(name, None);
    }

    #[test]
    fn user_set_without_any_change_is_a_usage_error() {
        let err = parse("user set alice").unwrap_err();
        assert_eq!(
            (err.kind(), err.exit_code()),
            (ErrorKind::MissingRequiredArgument, 2)
        );
        let err = parse("user set alice --enable --disable").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn service_add_has_its_own_url_while_connection_options_come_first() {
        let cli = parse(
            "--url http://127.0.0.1:9000 service add git --url https://git.lan \
                         --upstream 10.0.0.5:3000 --json",
        )
        .unwrap();
        assert_eq!(cli.conn.url.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(cli.json);
        let Command::Service(ServiceCmd::Add {
            url,
            category,
            role,
            ..
        }) = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!([url, category, role], ["https://git.lan", "apps", "member"]);
    }

    #[test]
    fn user_token_requires_a_user_and_kind_is_checked() {
        let err = parse("token create --kind user").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse("token create --kind root").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        assert!(parse("token create --kind service --expires 30d").is_ok());
    }

    #[test]
    fn token_from_the_environment_is_hidden_in_help_and_debug_output() {
        let command = Cli::command();
        let token = command
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .unwrap();
        assert!(token.is_hide_env_values_set());
        let cli = parse("--token orch_1_topsecret token list").unwrap();
        assert!(!format!("{cli:?}").contains("topsecret"));
    }

    fn exec_args(args: &[&str]) -> Result<(bool, ExecArgs), clap::Error> {
        let cli = Cli::try_parse_from(["orchestratorctl"].iter().chain(args))?;
        match cli.command {
            Command::Exec(exec) => Ok((cli.json, exec)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn exec_takes_everything_after_the_user_or_the_double_dash_as_the_command() {
        let (_, exec) = exec_args(&["exec", "alice", "--", "sh", "-c", "exit 3"]).unwrap();
        assert_eq!(
            (exec.user.as_str(), exec.command),
            ("alice", vec!["sh".into(), "-c".into(), "exit 3".into()])
        );
        let (_, exec) = exec_args(&["exec", "alice", "ls", "-la"]).unwrap();
        assert_eq!(exec.command, ["ls", "-la"]);
        // Options after the command are the command's, even ones we also have.
        let (json, exec) =
            exec_args(&["exec", "alice", "ls", "--json", "--", "--cwd", "x"]).unwrap();
        assert!(!json && exec.cwd.is_none());
        assert_eq!(exec.command, ["ls", "--json", "--", "--cwd", "x"]);
        let (_, exec) = exec_args(&["exec", "alice", "--", "--help"]).unwrap();
        assert_eq!(exec.command, ["--help"]);
    }

    #[test]
    fn exec_options_go_before_the_user() {
        let args = [
            "exec",
            "--json",
            "--timeout",
            "5",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--env",
            "EMPTY=",
            "--cwd",
            "/tmp",
            "--stdin",
            "alice",
            "env",
        ];
        let (json, exec) = exec_args(&args).unwrap();
        assert!(json && exec.stdin);
        assert_eq!((exec.timeout, exec.cwd.as_deref()), (Some(5), Some("/tmp")));
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            exec.env,
            [pair("A", "1"), pair("B", "x=y"), pair("EMPTY", "")]
        );
        assert_eq!(exec.command, ["env"]);
    }

    #[test]
    fn exec_without_a_command_or_with_a_bad_env_is_a_usage_error() {
        let err = exec_args(&["exec", "alice"]).unwrap_err();
        assert_eq!(
            (err.kind(), err.exit_code()),
            (ErrorKind::MissingRequiredArgument, 2)
        );
        let err = exec_args(&["exec", "alice", "--"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        for bad in ["NOVALUE", "=x"] {
            let err = exec_args(&["exec", "--env", bad, "alice", "true"]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
        }
        let err = exec_args(&["exec", "--timeout", "soon", "alice", "true"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn box_logs_default_to_a_hundred_lines_and_bulk_checks_its_action() {
        let cli = parse("box logs alice").unwrap();
        assert!(matches!(
            cli.command,
            Command::Boxes(BoxCmd::Logs { lines: 100, .. })
        ));
        let err = parse("box bulk reset").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        let cli = parse("box bulk stop --role demo --json").unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Boxes(BoxCmd::Bulk {
                action: BulkAction::Stop,
                ..
            })
        ));
    }

    #[test]
    fn long_help_documents_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "0  success",
            "1  API error",
            "2  usage",
            "3  daemon unreachable",
            "4  not found",
            "5  unauthorized",
        ] {
            assert!(help.contains(code), "{code} missing from --help");
        }
    }
}
