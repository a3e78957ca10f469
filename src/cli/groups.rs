//! `ironboot groups …` (alias `group`): groups, their selectors, variables
//! and generation pointers, and who is in them and why.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::typed;
use super::{print, print_json, value_of, CliError, Connection, Output};
use crate::http::api::views::{Deleted, GroupList, GroupView, MemberList};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Every group: selector, generation, description.
    List,
    /// One group, and its members with why each is one.
    Show { group: String },
    /// Create a group.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Label selector, e.g. 'role=db,rack in (r1,r2) || gpu'.
        #[arg(long)]
        selector: Option<String>,
        /// A template variable (repeatable); the value is JSON if it parses
        /// as JSON, else a string.
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// The generation its machines boot: STREAM:NUMBER.
        #[arg(long, value_name = "STREAM:NUMBER")]
        generation: Option<String>,
    },
    /// Change a group (only what is given). Sends If-Match with the ETag it
    /// just read, so a concurrent change is refused rather than overwritten.
    Set {
        group: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, conflicts_with = "no_selector")]
        selector: Option<String>,
        /// Remove the selector: only assigned machines stay in the group.
        #[arg(long)]
        no_selector: bool,
        /// Set a template variable (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Remove a template variable (repeatable).
        #[arg(long = "unset-var", value_name = "KEY")]
        unset: Vec<String>,
        #[arg(long, value_name = "STREAM:NUMBER")]
        generation: Option<String>,
    },
    /// Delete a group (refused while machines are assigned to or pinned in it).
    Delete { group: String },
    /// The BMC fields the group's machines share (a machine's own win).
    Bmc {
        group: String,
        #[command(subcommand)]
        command: super::power::BmcCommand,
    },
    /// The machines in a group and why each is in it.
    Members { group: String },
    /// Point a group at a generation (creates the group if needed).
    SetGeneration {
        group: String,
        stream: String,
        generation: i64,
    },
}

const GROUP_COLUMNS: &[(&str, &str)] = &[
    ("GROUP", "name"),
    ("SELECTOR", "selector"),
    ("GENERATION", "pointer"),
    ("DESCRIPTION", "description"),
];

const MEMBER_COLUMNS: &[(&str, &str)] = &[
    ("MAC", "mac"),
    ("HOSTNAME", "hostname"),
    ("BY", "membership.by"),
    ("PIN", "pin"),
    ("WHY", "reason"),
];

fn generation(text: &str) -> Result<Value, CliError> {
    let bad = || CliError::Usage(format!("--generation {text:?}: expected STREAM:NUMBER"));
    let (stream, number) = text.rsplit_once(':').ok_or_else(bad)?;
    let number: i64 = number.parse().map_err(|_| bad())?;
    Ok(json!({ "stream": stream, "generation": number }))
}

fn set_vars(vars: &mut Map<String, Value>, pairs: &[String]) -> Result<(), CliError> {
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--var {pair:?}: expected KEY=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        vars.insert(k.to_string(), value);
    }
    Ok(())
}

fn show_one(output: Output, g: &GroupView) {
    let row = value_of(g);
    print(output, &row, std::slice::from_ref(&row), GROUP_COLUMNS);
}

pub async fn groups(conn: &Connection, cmd: &GroupsCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        GroupsCommand::List => {
            let list: GroupList = client.get_as("/api/v1/groups").await?;
            let all = value_of(&list);
            let rows: Vec<Value> = list.groups.iter().map(value_of).collect();
            print(conn.output, &all, &rows, GROUP_COLUMNS);
            let ties: Vec<Value> = list.ties.iter().map(value_of).collect();
            if conn.output == Output::Table && !ties.is_empty() {
                println!("\nselector ties (these machines are in default until resolved):");
                print(conn.output, &all, &ties, MEMBER_COLUMNS);
            }
        }
        GroupsCommand::Bmc { group, command } => {
            super::power::group_bmc(conn, group, command).await?;
        }
        GroupsCommand::Show { group } => {
            let g: GroupView = client.get_as(&format!("/api/v1/groups/{group}")).await?;
            let members: MemberList = client
                .get_as(&format!("/api/v1/groups/{group}/members"))
                .await?;
            let rows: Vec<Value> = members.members.iter().map(value_of).collect();
            if conn.output == Output::Json {
                let mut whole = value_of(&g);
                whole["members"] = Value::Array(rows);
                print_json(&whole);
                return Ok(());
            }
            show_one(conn.output, &g);
            println!("variables: {}", g.variables);
            println!();
            print(conn.output, &value_of(&members), &rows, MEMBER_COLUMNS);
        }
        GroupsCommand::Create {
            name,
            description,
            selector,
            vars,
            generation: gen,
        } => {
            let mut variables = Map::new();
            set_vars(&mut variables, vars)?;
            let mut body = json!({ "name": name });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(s) = selector {
                body["selector"] = json!(s);
            }
            if !variables.is_empty() {
                body["variables"] = Value::Object(variables);
            }
            if let Some(g) = gen {
                body["generation"] = generation(g)?;
            }
            let g: GroupView = client.post_as("/api/v1/groups", &body).await?;
            show_one(conn.output, &g);
        }
        GroupsCommand::Set {
            group,
            description,
            selector,
            no_selector,
            vars,
            unset,
            generation: gen,
        } => {
            let path = format!("/api/v1/groups/{group}");
            let (current, tag) = client.send_tagged(Method::GET, &path, None, None).await?;
            let current: GroupView = typed(&path, current)?;
            let mut body = json!({});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(s) = selector {
                body["selector"] = json!(s);
            }
            if *no_selector {
                body["selector"] = Value::Null;
            }
            if !vars.is_empty() || !unset.is_empty() {
                let mut variables = current.variables.as_object().cloned().unwrap_or_default();
                set_vars(&mut variables, vars)?;
                for k in unset {
                    variables.remove(k);
                }
                body["variables"] = Value::Object(variables);
            }
            if let Some(g) = gen {
                body["generation"] = generation(g)?;
            }
            if body.as_object().is_some_and(Map::is_empty) {
                return Err(CliError::Usage(
                    "nothing to change: give --description, --selector, --no-selector, --var, --unset-var or --generation".into(),
                ));
            }
            let (g, _) = client
                .send_tagged(Method::PATCH, &path, Some(&body), tag.as_deref())
                .await?;
            show_one(conn.output, &typed(&path, g)?);
        }
        GroupsCommand::Delete { group } => {
            let r: Deleted = client.delete_as(&format!("/api/v1/groups/{group}")).await?;
            match conn.output {
                Output::Json => print_json(&r),
                Output::Table => println!("group {group} deleted"),
            }
        }
        GroupsCommand::Members { group } => {
            let m: MemberList = client
                .get_as(&format!("/api/v1/groups/{group}/members"))
                .await?;
            let rows: Vec<Value> = m.members.iter().map(value_of).collect();
            print(conn.output, &value_of(&m), &rows, MEMBER_COLUMNS);
        }
        GroupsCommand::SetGeneration {
            group,
            stream,
            generation,
        } => {
            let g: GroupView = client
                .put_as(
                    &format!("/api/v1/groups/{group}/generation"),
                    &json!({ "stream": stream, "generation": generation }),
                )
                .await?;
            match conn.output {
                Output::Json => print_json(&g),
                Output::Table => println!("group {group} -> {stream} gen {generation}"),
            }
        }
    }
    Ok(())
}
