//! Which group a machine is in, and why: a pure function of its explicit
//! assignment, its labels and the groups' selectors.
//!
//! Rules, in order:
//! 1. An explicit assignment (an operator set the machine's group) wins,
//!    whatever the selectors say.
//! 2. Otherwise the group whose selector matches with the highest
//!    specificity (see [`crate::boot::select`]) wins.
//! 3. Two or more groups matching with the same highest specificity are a
//!    tie: an error the operator must fix, never a silent pick. Until it is
//!    fixed the machine is treated as matched by nothing: it is in
//!    `default` and boots what `default` boots (what a machine no group
//!    claims always gets), while `explain`, the API and the ledger report
//!    the tie and the groups in it.
//! 4. No selector matches: `default`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::select::Selector;

/// The group every machine no other group claims is in.
pub const DEFAULT_GROUP: &str = "default";

/// A group with a selector, as membership needs it.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub group: &'a str,
    pub selector: &'a Selector,
}

/// A group whose selector matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matched {
    pub group: String,
    pub selector: String,
    pub specificity: usize,
}

/// The answer, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Membership {
    /// An operator assigned the machine to `group`.
    Explicit {
        group: String,
        /// Selectors that match too (the assignment beats them).
        overridden: Vec<Matched>,
    },
    /// The most specific matching selector was `chosen`'s.
    Selector {
        chosen: Matched,
        /// Less specific selectors that match too.
        outranked: Vec<Matched>,
    },
    /// No selector matches.
    Default,
    /// Several selectors match with the same, highest specificity: the
    /// machine is in `default` until an operator resolves it.
    Tie {
        tied: Vec<Matched>,
        outranked: Vec<Matched>,
    },
}

impl Membership {
    /// The group whose pointer, variables and settings the machine gets.
    pub fn group(&self) -> &str {
        match self {
            Membership::Explicit { group, .. } => group,
            Membership::Selector { chosen, .. } => &chosen.group,
            Membership::Default | Membership::Tie { .. } => DEFAULT_GROUP,
        }
    }

    /// A sentence for operators (explain, the ledger, console messages).
    pub fn reason(&self) -> String {
        match self {
            Membership::Explicit { group, overridden } if overridden.is_empty() => {
                format!("explicitly assigned to group {group}")
            }
            Membership::Explicit { group, overridden } => format!(
                "explicitly assigned to group {group} (the assignment beats the selector{} of {})",
                if overridden.len() > 1 { "s" } else { "" },
                names(overridden)
            ),
            Membership::Selector { chosen, outranked } => {
                let mut s = format!(
                    "group {}'s selector `{}` matches its labels (specificity {})",
                    chosen.group, chosen.selector, chosen.specificity
                );
                if !outranked.is_empty() {
                    s.push_str(&format!(", more specific than {}", names(outranked)));
                }
                s
            }
            Membership::Default => {
                format!("no group's selector matches its labels: group {DEFAULT_GROUP}")
            }
            Membership::Tie { tied, .. } => format!(
                "selector tie: {} match with the same specificity {}; it stays in group \
                 {DEFAULT_GROUP} until a selector is made more specific or the machine is assigned a group",
                tied.iter()
                    .map(|m| format!("group {} (`{}`)", m.group, m.selector))
                    .collect::<Vec<_>>()
                    .join(" and "),
                tied[0].specificity
            ),
        }
    }

    pub fn is_tie(&self) -> bool {
        matches!(self, Membership::Tie { .. })
    }
}

fn names(m: &[Matched]) -> String {
    m.iter()
        .map(|m| format!("group {} (`{}`)", m.group, m.selector))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides the group of a machine with these labels and this assignment
/// (`None`: not assigned), among these claims.
pub fn resolve<'a>(
    assigned: Option<&str>,
    labels: &BTreeMap<String, String>,
    claims: impl IntoIterator<Item = Claim<'a>>,
) -> Membership {
    let mut matched: Vec<Matched> = claims
        .into_iter()
        .filter_map(|c| {
            c.selector.matches(labels).map(|specificity| Matched {
                group: c.group.to_string(),
                selector: c.selector.to_string(),
                specificity,
            })
        })
        .collect();
    // Most specific first, then by name so every answer is repeatable.
    matched.sort_by(|a, b| {
        b.specificity
            .cmp(&a.specificity)
            .then_with(|| a.group.cmp(&b.group))
    });
    if let Some(group) = assigned {
        return Membership::Explicit {
            group: group.to_string(),
            overridden: matched.into_iter().filter(|m| m.group != group).collect(),
        };
    }
    let Some(best) = matched.first().map(|m| m.specificity) else {
        return Membership::Default;
    };
    let rest = matched.split_off(matched.iter().take_while(|m| m.specificity == best).count());
    if matched.len() > 1 {
        return Membership::Tie {
            tied: matched,
            outranked: rest,
        };
    }
    Membership::Selector {
        chosen: matched.remove(0),
        outranked: rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(group: &str, selector: &str, specificity: usize) -> Matched {
        Matched {
            group: group.into(),
            selector: selector.into(),
            specificity,
        }
    }

    #[test]
    fn membership_table() {
        let groups: Vec<(&str, super::Selector)> = [
            ("db", "role=db"),
            ("db-r1", "role=db,rack=r1"),
            ("db-eu", "role=db,zone=eu"),
            ("gpu", "gpu || accel in (a100,h100)"),
            ("web", "role=web"),
            ("www", "role in (web,www)"),
        ]
        .iter()
        .map(|(g, s)| (*g, s.parse().unwrap()))
        .collect();
        let claims = || {
            groups.iter().map(|(g, s)| Claim {
                group: g,
                selector: s,
            })
        };
        use Membership::*;
        let sel = |chosen, outranked| Selector { chosen, outranked };
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            BTreeMap<String, String>,
            Membership,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("no labels",                 None,          labels(&[]),                              Default),
            ("unmatched labels",          None,          labels(&[("role", "cache")]),             Default),
            ("one selector",              None,          labels(&[("role", "db")]),                sel(m("db", "role=db", 1), vec![])),
            ("most specific wins",        None,          labels(&[("role", "db"), ("rack", "r1")]), sel(m("db-r1", "role=db,rack=r1", 2), vec![m("db", "role=db", 1)])),
            ("OR: either term",           None,          labels(&[("accel", "h100")]),             sel(m("gpu", "gpu || accel in (a100,h100)", 1), vec![])),
            ("tie at the top",            None,          labels(&[("role", "db"), ("rack", "r1"), ("zone", "eu")]),
                                                                                                  Tie { tied: vec![m("db-eu", "role=db,zone=eu", 2), m("db-r1", "role=db,rack=r1", 2)], outranked: vec![m("db", "role=db", 1)] }),
            ("tie of equal selectors",    None,          labels(&[("role", "web")]),               Tie { tied: vec![m("web", "role=web", 1), m("www", "role in (web,www)", 1)], outranked: vec![] }),
            ("explicit beats selectors",  Some("gpu"),   labels(&[("role", "db")]),                Explicit { group: "gpu".into(), overridden: vec![m("db", "role=db", 1)] }),
            ("explicit resolves a tie",   Some("web"),   labels(&[("role", "web")]),               Explicit { group: "web".into(), overridden: vec![m("www", "role in (web,www)", 1)] }),
            ("explicit default",          Some("default"), labels(&[("role", "db")]),              Explicit { group: "default".into(), overridden: vec![m("db", "role=db", 1)] }),
        ];
        for (name, assigned, l, want) in table {
            assert_eq!(resolve(assigned, &l, claims()), want, "{name}");
        }
    }

    #[test]
    fn groups_and_reasons() {
        let tie = Membership::Tie {
            tied: vec![m("a", "x", 1), m("b", "y", 1)],
            outranked: vec![],
        };
        assert_eq!(tie.group(), DEFAULT_GROUP);
        assert!(tie.is_tie());
        assert_eq!(
            tie.reason(),
            "selector tie: group a (`x`) and group b (`y`) match with the same specificity 1; \
             it stays in group default until a selector is made more specific or the machine is assigned a group"
        );
        let chosen = Membership::Selector {
            chosen: m("db-r1", "role=db,rack=r1", 2),
            outranked: vec![m("db", "role=db", 1)],
        };
        assert_eq!(chosen.group(), "db-r1");
        assert_eq!(
            chosen.reason(),
            "group db-r1's selector `role=db,rack=r1` matches its labels (specificity 2), more specific than group db (`role=db`)"
        );
        assert_eq!(Membership::Default.group(), "default");
        let explicit = Membership::Explicit {
            group: "web".into(),
            overridden: vec![],
        };
        assert_eq!(explicit.reason(), "explicitly assigned to group web");
    }
}
