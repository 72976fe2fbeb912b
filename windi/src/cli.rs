//! The command line of `windi`: what each subcommand is and takes. `main.rs` runs them.

use clap::{Args, Parser, Subcommand};

/// windi: a chat backend. With no command, serves the API and the WebSocket relay.
///
/// Configuration comes from the environment and a .env file (see .env.example). With
/// DATABASE_URL unset, windi runs its own Postgres in WINDI_DATA_DIR (default ./.windi).
#[derive(Debug, Parser)]
#[command(name = "windi", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The API on PORT and the WebSocket relay on RELAY_PORT (the default command).
    Serve,
    /// Create the demo scenario: Alice, Bob, Carol, chats, messages, read marks. Idempotent.
    Demo,
    /// Load data at scale with COPY, in one transaction, adding to what is there.
    Generate(GenerateArgs),
    /// Verify the data invariants (gap-free seqs, marker ranges, memberships).
    Check,
    /// Create the database if missing and apply pending migrations, then exit. The supported
    /// way to migrate a database for the Lambda functions, which never migrate.
    Migrate,
    /// Exit 0 if the windi on this host answers GET /ready (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Operator tasks on the database.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Users to create.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Chats to create (private and group).
    #[arg(long, default_value_t = 5_000)]
    pub chats: usize,
    /// Messages to spread over the chats.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Share of the chats that are groups, between 0 and 1.
    #[arg(long, default_value_t = 0.3, value_parser = share)]
    pub group_share: f64,
    /// Smallest group.
    #[arg(long, default_value_t = 3)]
    pub min_group: usize,
    /// Largest group.
    #[arg(long, default_value_t = 30)]
    pub max_group: usize,
    /// Seed of the random choices, so a run can be repeated.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The long tail: this many extra group chats with --tail-messages messages each, on top
    /// of --chats and --messages (whose spread tops out near 800 messages in a chat).
    #[arg(long, default_value_t = 0)]
    pub tail_chats: usize,
    /// Messages in each chat of the long tail.
    #[arg(long, default_value_t = 1_000_000)]
    pub tail_messages: u64,
}

fn share(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0 and 1".into())
    }
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The port to ask (default: PORT, else 8000).
    #[arg(long)]
    pub port: Option<u16>,
    /// The path to ask; `/health` checks only that the process answers.
    #[arg(long, default_value = "/ready")]
    pub path: String,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List users, newest first.
    Users {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only users whose name or email contains this (case-insensitive).
        #[arg(long)]
        search: Option<String>,
    },
    /// End every session of a user (they must log in again).
    EndSessions {
        /// The user's id (see `windi admin users`).
        user_id: i64,
    },
    /// Disable a user: no more logins, every session ended. Undo with `enable`.
    Disable { user_id: i64 },
    /// Let a disabled user log in again.
    Enable { user_id: i64 },
    /// Delete used refresh tokens older than 30 days, sessions ended over 7 days ago, uploads
    /// not sent within 24 hours, and the files of deleted messages, 1,000 rows a statement.
    /// `windi serve` does it hourly; without one (Lambda), schedule this (with FILES_BUCKET).
    Prune,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn generate_takes_its_options_and_refuses_a_bad_share() {
        let cli = Cli::try_parse_from(["windi", "generate", "--users", "5", "--seed", "7"])
            .ok()
            .and_then(|c| c.command);
        let Some(Command::Generate(args)) = cli else {
            panic!("generate did not parse");
        };
        assert_eq!((args.users, args.seed, args.chats), (5, 7, 5_000));
        assert!(Cli::try_parse_from(["windi", "generate", "--group-share", "2"]).is_err());
        let cli = Cli::try_parse_from(["windi", "generate", "--tail-chats", "2"])
            .ok()
            .and_then(|c| c.command);
        let Some(Command::Generate(args)) = cli else {
            panic!("generate --tail-chats did not parse");
        };
        assert_eq!((args.tail_chats, args.tail_messages), (2, 1_000_000));
    }
}
