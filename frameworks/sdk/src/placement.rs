//! Placement constraints on agent attributes, with Marathon's operators:
//! `IS`, `LIKE`, `UNLIKE`, `UNIQUE`, `CLUSTER`, `GROUP_BY`, `MAX_PER`.
//! `hostname` is always an attribute (and `agent_id` too). One
//! implementation for every framework: a constraint judges a candidate agent
//! against the agents a group's instances already occupy, and says why when
//! it refuses — which is what "why is my app waiting?" answers are made of.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::Offer;

/// How a constraint compares an agent attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operator {
    /// The attribute equals the value.
    Is,
    /// The attribute matches the regular expression (the whole value).
    Like,
    /// The attribute does not match the regular expression.
    Unlike,
    /// Every instance on a different value of the attribute.
    Unique,
    /// Every instance on the same value (the given one, or the first's).
    Cluster,
    /// Instances spread evenly over the attribute's values (optionally: over
    /// at least this many values).
    GroupBy,
    /// At most this many instances per value of the attribute.
    MaxPer,
}

impl Operator {
    pub fn name(self) -> &'static str {
        match self {
            Operator::Is => "IS",
            Operator::Like => "LIKE",
            Operator::Unlike => "UNLIKE",
            Operator::Unique => "UNIQUE",
            Operator::Cluster => "CLUSTER",
            Operator::GroupBy => "GROUP_BY",
            Operator::MaxPer => "MAX_PER",
        }
    }
}

/// A placement rule: `[attribute, operator, value]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Constraint {
    pub attribute: String,
    pub operator: Operator,
    #[serde(default)]
    pub value: String,
    /// The compiled `LIKE`/`UNLIKE` pattern.
    #[serde(skip)]
    pattern: OnceLock<Option<regex::Regex>>,
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        (&self.attribute, self.operator, &self.value)
            == (&other.attribute, other.operator, &other.value)
    }
}

/// Where an agent stands, as constraints see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentAttributes {
    pub agent_id: String,
    pub hostname: String,
    /// Where the agent's tasks are reached (an IP address or a name).
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl AgentAttributes {
    /// The agent an offer is from.
    pub fn of(offer: &Offer) -> AgentAttributes {
        AgentAttributes {
            agent_id: offer
                .agent_id
                .as_ref()
                .map_or(String::new(), |a| a.value.clone()),
            hostname: offer.hostname.clone(),
            address: if offer.address.is_empty() {
                offer.hostname.clone()
            } else {
                offer.address.clone()
            },
            attributes: offer
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.text.clone()))
                .collect(),
        }
    }

    /// The value of `name` on this agent (`hostname` and `agent_id` are
    /// built in).
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            "hostname" => Some(self.hostname.as_str()),
            "agent_id" => Some(self.agent_id.as_str()),
            _ => self.attributes.get(name).map(String::as_str),
        }
    }
}

impl Constraint {
    /// A checked constraint from `[attribute, operator]` or `[attribute,
    /// operator, value]`; the error says what is wrong (callers name the
    /// field).
    pub fn parse(parts: &[String]) -> Result<Constraint, String> {
        let (attribute, op, value) = match parts {
            [a, op] => (a.clone(), op.to_ascii_uppercase(), None),
            [a, op, v] => (a.clone(), op.to_ascii_uppercase(), Some(v.clone())),
            _ => {
                return Err("must be [attribute, operator] or [attribute, operator, value]".into());
            }
        };
        if attribute.trim().is_empty() {
            return Err("the attribute must not be empty".into());
        }
        let operator = match op.as_str() {
            "IS" | "EQ" | "==" => Operator::Is,
            "LIKE" => Operator::Like,
            "UNLIKE" => Operator::Unlike,
            "UNIQUE" => Operator::Unique,
            "CLUSTER" => Operator::Cluster,
            "GROUP_BY" => Operator::GroupBy,
            "MAX_PER" => Operator::MaxPer,
            _ => {
                return Err(format!(
                    "unknown operator `{op}` (IS, LIKE, UNLIKE, UNIQUE, CLUSTER, GROUP_BY, MAX_PER)"
                ));
            }
        };
        let needs_value = matches!(
            operator,
            Operator::Is | Operator::Like | Operator::Unlike | Operator::MaxPer
        );
        if needs_value && value.is_none() {
            return Err(format!("{} needs a value", operator.name()));
        }
        if operator == Operator::Unique && value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err("UNIQUE takes no value".into());
        }
        let value = value.unwrap_or_default();
        match operator {
            Operator::Like | Operator::Unlike => {
                if let Err(e) = regex::Regex::new(&format!("^(?:{value})$")) {
                    return Err(format!("`{value}` is not a regular expression: {e}"));
                }
            }
            Operator::MaxPer => match value.parse::<u32>() {
                Ok(n) if n >= 1 => {}
                _ => return Err(format!("MAX_PER needs a whole number >= 1, got `{value}`")),
            },
            Operator::GroupBy if !value.is_empty() => match value.parse::<u32>() {
                Ok(n) if n >= 1 => {}
                _ => return Err(format!("GROUP_BY takes a whole number >= 1, got `{value}`")),
            },
            _ => {}
        }
        Ok(Constraint {
            attribute,
            operator,
            value,
            pattern: OnceLock::new(),
        })
    }

    fn matches(&self, text: &str) -> bool {
        self.pattern
            .get_or_init(|| regex::Regex::new(&format!("^(?:{})$", self.value)).ok())
            .as_ref()
            .is_some_and(|r| r.is_match(text))
    }

    /// Whether `candidate` may take one more instance of a group whose
    /// instances occupy `placed`; `Err` says why not.
    pub fn check(
        &self,
        candidate: &AgentAttributes,
        placed: &[&AgentAttributes],
    ) -> Result<(), String> {
        let attr = self.attribute.as_str();
        let op = self.operator.name();
        let actual = candidate.get(attr);
        let count = |value: &str| placed.iter().filter(|p| p.get(attr) == Some(value)).count();
        let refuse = |why: String| Err(format!("{attr} {op}: {why}"));
        let Some(actual) = actual else {
            return if self.operator == Operator::Unlike {
                Ok(())
            } else {
                refuse("the agent has no such attribute".into())
            };
        };
        match self.operator {
            Operator::Is if actual == self.value => Ok(()),
            Operator::Is => refuse(format!("`{actual}` is not `{}`", self.value)),
            Operator::Like if self.matches(actual) => Ok(()),
            Operator::Like => refuse(format!("`{actual}` does not match `{}`", self.value)),
            Operator::Unlike if !self.matches(actual) => Ok(()),
            Operator::Unlike => refuse(format!("`{actual}` matches `{}`", self.value)),
            Operator::Unique if count(actual) == 0 => Ok(()),
            Operator::Unique => refuse(format!("an instance already runs on `{actual}`")),
            Operator::Cluster => {
                let want = if self.value.is_empty() {
                    placed.iter().find_map(|p| p.get(attr))
                } else {
                    Some(self.value.as_str())
                };
                match want {
                    Some(want) if want != actual => {
                        refuse(format!("instances cluster on `{want}`, not `{actual}`"))
                    }
                    _ => Ok(()),
                }
            }
            Operator::MaxPer => {
                let max: usize = self.value.parse().unwrap_or(1);
                if count(actual) < max {
                    Ok(())
                } else {
                    refuse(format!("`{actual}` already has {max} instance(s)"))
                }
            }
            Operator::GroupBy => {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for p in placed {
                    if let Some(v) = p.get(attr) {
                        *counts.entry(v).or_default() += 1;
                    }
                }
                let groups: usize = self.value.parse().unwrap_or(0);
                let fewest = if counts.len() < groups {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                };
                let mine = counts.get(actual).copied().unwrap_or(0);
                if mine <= fewest {
                    Ok(())
                } else {
                    refuse(format!(
                        "`{actual}` has {mine} instance(s), another value has {fewest}"
                    ))
                }
            }
        }
    }
}

/// Checks every constraint; the first refusal's reason, if any.
pub fn check_all(
    constraints: &[Constraint],
    candidate: &AgentAttributes,
    placed: &[&AgentAttributes],
) -> Result<(), String> {
    constraints
        .iter()
        .try_for_each(|c| c.check(candidate, placed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(host: &str, zone: &str) -> AgentAttributes {
        AgentAttributes {
            agent_id: format!("id-{host}"),
            hostname: host.into(),
            attributes: [("zone".to_string(), zone.to_string())].into(),
            ..Default::default()
        }
    }

    fn c(parts: &[&str]) -> Constraint {
        let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        Constraint::parse(&parts).expect("valid constraint")
    }

    #[test]
    fn parsing_names_what_is_wrong() {
        let err = |parts: &[&str]| {
            let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            Constraint::parse(&parts).expect_err("invalid")
        };
        assert!(err(&["zone", "NEAR", "a"]).contains("unknown operator `NEAR`"));
        assert!(err(&["zone", "IS"]).contains("IS needs a value"));
        assert!(err(&["zone", "LIKE", "("]).contains("not a regular expression"));
        assert!(err(&["zone", "MAX_PER", "0"]).contains("whole number"));
        assert!(err(&["zone", "GROUP_BY", "x"]).contains("whole number"));
        assert!(err(&["", "UNIQUE"]).contains("empty"));
        assert!(err(&["zone"]).contains("must be"));
        assert_eq!(c(&["zone", "group_by"]).operator, Operator::GroupBy);
    }

    #[test]
    fn value_operators() {
        let a = agent("h1", "eu-1");
        assert!(c(&["zone", "IS", "eu-1"]).check(&a, &[]).is_ok());
        assert!(c(&["zone", "IS", "eu"]).check(&a, &[]).is_err());
        assert!(c(&["zone", "LIKE", "eu-.*"]).check(&a, &[]).is_ok());
        assert!(
            c(&["zone", "LIKE", "eu"]).check(&a, &[]).is_err(),
            "whole value"
        );
        assert!(c(&["zone", "UNLIKE", "us-.*"]).check(&a, &[]).is_ok());
        assert!(
            c(&["rack", "UNLIKE", "r1"]).check(&a, &[]).is_ok(),
            "missing is unlike"
        );
        let why = c(&["rack", "IS", "r1"])
            .check(&a, &[])
            .expect_err("no rack");
        assert!(why.contains("no such attribute"), "{why}");
    }

    #[test]
    fn group_operators() {
        let (h1, h2, h3) = (agent("h1", "a"), agent("h2", "a"), agent("h3", "b"));
        let unique = c(&["hostname", "UNIQUE"]);
        assert!(unique.check(&h1, &[&h2]).is_ok());
        let why = unique.check(&h1, &[&h1]).expect_err("taken");
        assert!(why.contains("already runs on `h1`"), "{why}");

        let cluster = c(&["zone", "CLUSTER"]);
        assert!(cluster.check(&h3, &[]).is_ok(), "the first picks");
        assert!(cluster.check(&h2, &[&h1]).is_ok());
        assert!(cluster.check(&h3, &[&h1]).is_err());
        assert!(c(&["zone", "CLUSTER", "b"]).check(&h1, &[]).is_err());

        let max = c(&["zone", "MAX_PER", "2"]);
        assert!(max.check(&h2, &[&h1]).is_ok());
        assert!(max.check(&h2, &[&h1, &h2]).is_err());
        assert!(max.check(&h3, &[&h1, &h2]).is_ok());

        let spread = c(&["zone", "GROUP_BY"]);
        // Without a count, only the values in use are known.
        assert!(spread.check(&h1, &[&h1]).is_ok());
        assert!(spread.check(&h3, &[&h1]).is_ok());
        assert!(spread.check(&h2, &[&h1, &h3]).is_ok(), "a and b even");
        assert!(
            spread.check(&h2, &[&h1, &h2, &h3]).is_err(),
            "a is ahead of b"
        );
        let two = c(&["zone", "GROUP_BY", "2"]);
        assert!(
            two.check(&h2, &[&h1]).is_err(),
            "only one of two zones used"
        );
        assert!(two.check(&h3, &[&h1]).is_ok());
    }

    #[test]
    fn constraints_round_trip_through_json() {
        let one = c(&["zone", "LIKE", "a.*"]);
        let json = serde_json::to_string(&one).expect("serialize");
        let back: Constraint = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, one);
        assert!(back.check(&agent("h", "ab"), &[]).is_ok());
    }
}
