//! `steadfast users add|remove|list`: the embedded server's users file. It holds salted
//! SCRAM credentials and rights only; a password is read once, turned into credentials and
//! forgotten.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use steadfast::server::users::{check_name, Rights, User, UsersFile};

/// Options of `steadfast users`.
#[derive(Debug, Args)]
pub(crate) struct UsersArgs {
    /// The users file (created by the first `add`).
    #[arg(
        long,
        global = true,
        default_value = "./steadfast-users.toml",
        env = "STEADFAST_USERS_FILE"
    )]
    file: PathBuf,
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Add a user with a password (asked for, or read from standard input) and rights.
    Add(AddArgs),
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
    },
    /// List users, their mechanisms and rights (never a credential).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `steadfast users add`.
#[derive(Debug, Args)]
struct AddArgs {
    /// The user name.
    name: String,
    /// Read the password from the first line of standard input instead of asking for it.
    #[arg(long)]
    password_stdin: bool,
    /// No password: a user that authenticates with a client certificate (its common name),
    /// or the `ANONYMOUS` entry for listeners without SASL.
    #[arg(long, conflicts_with = "password_stdin")]
    no_password: bool,
    /// Replace the user if it exists (credentials and rights).
    #[arg(long)]
    replace: bool,
    /// Topic name prefix the user may fetch from (repeatable; `*` for every topic).
    #[arg(long = "read-topics", value_name = "PREFIX")]
    read_topics: Vec<String>,
    /// Topic name prefix the user may produce to.
    #[arg(long = "write-topics", value_name = "PREFIX")]
    write_topics: Vec<String>,
    /// Topic name prefix the user may create.
    #[arg(long = "create-topics", value_name = "PREFIX")]
    create_topics: Vec<String>,
    /// Topic name prefix the user may delete.
    #[arg(long = "delete-topics", value_name = "PREFIX")]
    delete_topics: Vec<String>,
    /// Consumer-group prefix the user may join, commit for and describe.
    #[arg(long = "groups", value_name = "PREFIX")]
    groups: Vec<String>,
    /// Consumer-group prefix the user may delete.
    #[arg(long = "delete-groups", value_name = "PREFIX")]
    delete_groups: Vec<String>,
}

/// Runs `steadfast users`.
pub(crate) fn users(args: UsersArgs) -> anyhow::Result<()> {
    match args.command {
        UsersCommand::Add(add) => add_user(&args.file, add),
        UsersCommand::Remove { name } => {
            let mut file = UsersFile::load(&args.file)?;
            if file.users.remove(&name).is_none() {
                bail!("no user `{name}` in {}", args.file.display());
            }
            file.save(&args.file)?;
            println!("removed user {name}");
            Ok(())
        }
        UsersCommand::List { json } => list(&args.file, json),
    }
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn add_user(path: &Path, args: AddArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let mut file = UsersFile::load_or_empty(path)?;
    if file.users.contains_key(&args.name) && !args.replace {
        bail!(
            "user `{}` exists in {}: pass --replace to replace it",
            args.name,
            path.display()
        );
    }
    let rights = Rights {
        read_topics: args.read_topics,
        write_topics: args.write_topics,
        create_topics: args.create_topics,
        delete_topics: args.delete_topics,
        groups: args.groups,
        delete_groups: args.delete_groups,
    };
    let user = if args.no_password {
        User {
            rights,
            ..User::default()
        }
    } else {
        User::with_password(&read_password(args.password_stdin)?, rights)?
    };
    file.users.insert(args.name.clone(), user);
    file.save(path)?;
    println!("added user {} to {}", args.name, path.display());
    Ok(())
}

fn list(path: &Path, json: bool) -> anyhow::Result<()> {
    let file = UsersFile::load(path)?;
    if json {
        for (name, user) in &file.users {
            let line = serde_json::json!({
                "name": name,
                "mechanisms": user.mechanisms(),
                "rights": user.rights,
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!("{:<20} {:<36} RIGHTS", "USER", "MECHANISMS");
    for (name, user) in &file.users {
        let mechanisms = user.mechanisms().join(",");
        println!(
            "{:<20} {:<36} {}",
            name,
            if mechanisms.is_empty() {
                "-"
            } else {
                &mechanisms
            },
            describe(&user.rights)
        );
    }
    Ok(())
}

fn describe(rights: &Rights) -> String {
    let parts: Vec<String> = [
        ("read", &rights.read_topics),
        ("write", &rights.write_topics),
        ("create", &rights.create_topics),
        ("delete", &rights.delete_topics),
        ("groups", &rights.groups),
        ("delete-groups", &rights.delete_groups),
    ]
    .into_iter()
    .filter(|(_, prefixes)| !prefixes.is_empty())
    .map(|(what, prefixes)| format!("{what}={}", prefixes.join(",")))
    .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}
