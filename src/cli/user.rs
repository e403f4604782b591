//! `corekv user`: the users of a node or cluster, through any node's HTTP API (admin): list
//! them, set one (the rules of Redis's `ACL SETUSER`), delete one.

use std::time::Duration;

use serde_json::json;

use super::cluster::send;

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Every user, as `ACL LIST` shows them (secrets as SHA-256)
    List(Target),
    /// Creates or changes a user: rules as ACL SETUSER takes them, e.g.
    /// `on '>secret' '~app:*' +@read +@write`
    Set {
        #[command(flatten)]
        target: Target,
        name: String,
        #[arg(required = true, allow_hyphen_values = true)]
        rules: Vec<String>,
    },
    /// Deletes a user (its connections lose their permissions at their next request)
    Del {
        #[command(flatten)]
        target: Target,
        name: String,
    },
}

/// Where the command goes.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Any node's HTTP admin address (its --http-listen)
    #[arg(long, value_name = "HOST:PORT", default_value = crate::config::HTTP_LISTEN_DEFAULT)]
    pub http: String,
}

pub fn run(command: UserCommand) -> Result<(), String> {
    let timeout = Duration::from_secs(10);
    match command {
        UserCommand::List(t) => {
            let answer = send(&t.http, "GET", "/api/users", None, timeout)?;
            for line in answer["users"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
        }
        UserCommand::Set { target, name, rules } => {
            let body = json!({ "rules": rules });
            send(&target.http, "PUT", &format!("/api/users/{name}"), Some(&body), timeout)?;
            println!("OK");
        }
        UserCommand::Del { target, name } => {
            send(&target.http, "DELETE", &format!("/api/users/{name}"), None, timeout)?;
            println!("OK");
        }
    }
    Ok(())
}
