//! Access control lists in Mesos's vocabulary: each action has a list of
//! rules, and a rule allows its `principals` the action on its objects
//! (roles, users, framework principals, framework names). An action no rule
//! allows is refused: once a file has `[acls]`, the default is deny.
//!
//! Where Mesos keys viewing and sandbox access by the task's Unix user, we
//! key them by the framework's principal: here most tasks run as the same
//! unprivileged user, and what separates tenants is who runs the framework.
//! A principal may always see, read and tear down its own frameworks.

use serde::Deserialize;

/// A set of subjects or objects: every one (`"any"`), or those listed.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawEntity")]
pub enum Entity {
    Any,
    Some(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEntity {
    Word(String),
    List(Vec<String>),
}

impl TryFrom<RawEntity> for Entity {
    type Error = String;
    fn try_from(raw: RawEntity) -> Result<Self, String> {
        match raw {
            RawEntity::Word(w) if w == "any" => Ok(Entity::Any),
            RawEntity::Word(w) => Err(format!(
                "`{w}`: give a list (`[\"{w}\"]`) or the word \"any\""
            )),
            RawEntity::List(list) => Ok(Entity::Some(list)),
        }
    }
}

impl Entity {
    fn contains(&self, value: &str) -> bool {
        match self {
            Entity::Any => true,
            Entity::Some(list) => list.iter().any(|v| v == value),
        }
    }
}

/// Who may act, alone (agents, drains, gone).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRule {
    pub principals: Entity,
}

/// Who may act on which roles.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub principals: Entity,
    pub roles: Entity,
}

/// Who may run tasks as which users.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRule {
    pub principals: Entity,
    pub users: Entity,
}

/// Who may act on the frameworks of which principals.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameworkRule {
    pub principals: Entity,
    pub framework_principals: Entity,
}

/// Who may announce a UI for frameworks of which names (the master relays
/// `/{name}/…` to it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRule {
    pub principals: Entity,
    pub names: Entity,
}

/// The `[acls]` table of an auth file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acls {
    #[serde(default)]
    pub register_frameworks: Vec<RoleRule>,
    #[serde(default)]
    pub run_tasks: Vec<UserRule>,
    #[serde(default)]
    pub register_agents: Vec<SubjectRule>,
    #[serde(default)]
    pub teardown_frameworks: Vec<FrameworkRule>,
    #[serde(default)]
    pub update_weights: Vec<RoleRule>,
    #[serde(default)]
    pub drain_agents: Vec<SubjectRule>,
    #[serde(default)]
    pub mark_agents_gone: Vec<SubjectRule>,
    #[serde(default)]
    pub view_frameworks: Vec<FrameworkRule>,
    #[serde(default)]
    pub view_tasks: Vec<FrameworkRule>,
    #[serde(default)]
    pub access_sandboxes: Vec<FrameworkRule>,
    #[serde(default)]
    pub announce_webui: Vec<NameRule>,
}

/// What a principal asks to do.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    RegisterFramework {
        role: &'a str,
    },
    /// Run a task as `user` (tasks naming no user run as the agent's
    /// unprivileged default and need no rule).
    RunTask {
        user: &'a str,
    },
    RegisterAgent,
    TeardownFramework {
        framework_principal: &'a str,
    },
    UpdateWeight {
        role: &'a str,
    },
    DrainAgent,
    MarkAgentGone,
    ViewFramework {
        framework_principal: &'a str,
    },
    ViewTask {
        framework_principal: &'a str,
    },
    AccessSandbox {
        framework_principal: &'a str,
    },
    AnnounceWebui {
        name: &'a str,
    },
}

impl Action<'_> {
    /// The action's name in the ACL file (for refusals and the audit log).
    pub fn name(&self) -> &'static str {
        match self {
            Action::RegisterFramework { .. } => "register_frameworks",
            Action::RunTask { .. } => "run_tasks",
            Action::RegisterAgent => "register_agents",
            Action::TeardownFramework { .. } => "teardown_frameworks",
            Action::UpdateWeight { .. } => "update_weights",
            Action::DrainAgent => "drain_agents",
            Action::MarkAgentGone => "mark_agents_gone",
            Action::ViewFramework { .. } => "view_frameworks",
            Action::ViewTask { .. } => "view_tasks",
            Action::AccessSandbox { .. } => "access_sandboxes",
            Action::AnnounceWebui { .. } => "announce_webui",
        }
    }

    /// What the action is, in words (for refusals).
    pub fn describe(&self) -> String {
        match self {
            Action::RegisterFramework { role } => format!("register frameworks in role `{role}`"),
            Action::RunTask { user } => format!("run tasks as user `{user}`"),
            Action::RegisterAgent => "register agents".into(),
            Action::TeardownFramework {
                framework_principal,
            } => format!("tear down frameworks of principal `{framework_principal}`"),
            Action::UpdateWeight { role } => format!("set the weight of role `{role}`"),
            Action::DrainAgent => "drain agents".into(),
            Action::MarkAgentGone => "mark agents gone".into(),
            Action::ViewFramework {
                framework_principal,
            } => format!("view frameworks of principal `{framework_principal}`"),
            Action::ViewTask {
                framework_principal,
            } => format!("view tasks of principal `{framework_principal}`"),
            Action::AccessSandbox {
                framework_principal,
            } => format!("read sandboxes of principal `{framework_principal}`"),
            Action::AnnounceWebui { name } => {
                format!("announce a web UI for frameworks named `{name}`")
            }
        }
    }

    /// Acting on one's own framework is always allowed.
    fn on_own_framework(&self, principal: &str) -> bool {
        match self {
            Action::TeardownFramework {
                framework_principal,
            }
            | Action::ViewFramework {
                framework_principal,
            }
            | Action::ViewTask {
                framework_principal,
            }
            | Action::AccessSandbox {
                framework_principal,
            } => *framework_principal == principal,
            _ => false,
        }
    }
}

impl Acls {
    /// Whether some rule allows `principal` to do `action`.
    pub fn allows(&self, principal: &str, action: Action<'_>) -> bool {
        if action.on_own_framework(principal) {
            return true;
        }
        let subject = |p: &Entity| p.contains(principal);
        match action {
            Action::RegisterFramework { role } => self
                .register_frameworks
                .iter()
                .any(|r| subject(&r.principals) && r.roles.contains(role)),
            Action::RunTask { user } => self
                .run_tasks
                .iter()
                .any(|r| subject(&r.principals) && r.users.contains(user)),
            Action::RegisterAgent => self.register_agents.iter().any(|r| subject(&r.principals)),
            Action::UpdateWeight { role } => self
                .update_weights
                .iter()
                .any(|r| subject(&r.principals) && r.roles.contains(role)),
            Action::DrainAgent => self.drain_agents.iter().any(|r| subject(&r.principals)),
            Action::MarkAgentGone => self.mark_agents_gone.iter().any(|r| subject(&r.principals)),
            Action::TeardownFramework {
                framework_principal,
            } => framework_rule(&self.teardown_frameworks, principal, framework_principal),
            Action::ViewFramework {
                framework_principal,
            } => framework_rule(&self.view_frameworks, principal, framework_principal),
            Action::ViewTask {
                framework_principal,
            } => framework_rule(&self.view_tasks, principal, framework_principal),
            Action::AccessSandbox {
                framework_principal,
            } => framework_rule(&self.access_sandboxes, principal, framework_principal),
            Action::AnnounceWebui { name } => self
                .announce_webui
                .iter()
                .any(|r| subject(&r.principals) && r.names.contains(name)),
        }
    }

    /// Whether `principal` may view every framework and task: readers of
    /// the whole state skip filtering.
    pub fn views_everything(&self, principal: &str) -> bool {
        let all = |rules: &[FrameworkRule]| {
            rules
                .iter()
                .any(|r| r.principals.contains(principal) && r.framework_principals == Entity::Any)
        };
        all(&self.view_frameworks) && all(&self.view_tasks)
    }
}

fn framework_rule(rules: &[FrameworkRule], principal: &str, framework_principal: &str) -> bool {
    rules.iter().any(|r| {
        r.principals.contains(principal) && r.framework_principals.contains(framework_principal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acls(text: &str) -> Acls {
        toml::from_str(text).expect("valid ACLs")
    }

    #[test]
    fn a_rule_allows_its_principals_on_its_objects_only() {
        let a = acls(
            r#"
            register_frameworks = [{ principals = ["batch"], roles = ["batch", "*"] }]
            run_tasks = [{ principals = "any", users = ["nobody"] },
                         { principals = ["ops"], users = "any" }]
            drain_agents = [{ principals = ["ops"] }]
            "#,
        );
        assert!(a.allows("batch", Action::RegisterFramework { role: "batch" }));
        assert!(!a.allows("batch", Action::RegisterFramework { role: "prod" }));
        assert!(!a.allows("web", Action::RegisterFramework { role: "batch" }));
        assert!(a.allows("web", Action::RunTask { user: "nobody" }));
        assert!(!a.allows("web", Action::RunTask { user: "root" }));
        assert!(a.allows("ops", Action::RunTask { user: "root" }));
        assert!(a.allows("ops", Action::DrainAgent));
        assert!(!a.allows("web", Action::DrainAgent));
        // Nothing said about agents: nobody may register one.
        assert!(!a.allows("ops", Action::RegisterAgent));
    }

    #[test]
    fn a_principal_always_reaches_its_own_frameworks() {
        let a = acls(r#"view_tasks = [{ principals = ["ops"], framework_principals = "any" }]"#);
        let own = Action::AccessSandbox {
            framework_principal: "web",
        };
        assert!(a.allows("web", own));
        assert!(!a.allows(
            "web",
            Action::AccessSandbox {
                framework_principal: "batch"
            }
        ));
        assert!(a.allows(
            "ops",
            Action::ViewTask {
                framework_principal: "batch"
            }
        ));
        assert!(!a.views_everything("ops"), "frameworks are not all visible");
    }

    #[test]
    fn typos_and_bare_words_are_refused() {
        let typo = toml::from_str::<Acls>(r#"drain_agent = [{ principals = ["ops"] }]"#);
        assert!(typo.is_err(), "an unknown action is an error, not ignored");
        let field = toml::from_str::<Acls>(r#"drain_agents = [{ principal = ["ops"] }]"#);
        assert!(field.is_err());
        let bare = toml::from_str::<Acls>(r#"drain_agents = [{ principals = "ops" }]"#)
            .expect_err("a bare word other than any");
        assert!(bare.to_string().contains("\"any\""), "{bare}");
    }
}
