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
