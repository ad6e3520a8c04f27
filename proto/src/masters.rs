//! Finding the leading master among several: clients are given a list
//! (`http://m1:5050,http://m2:5050`), standbys refuse with a hint naming
//! the leader, and [`MasterList`] moves to the hint or to the next master.

/// gRPC metadata (and HTTP header) carrying the leader's URL in a
/// standby's refusal.
pub const LEADER_METADATA: &str = "agora-leader";

/// The masters of a comma-separated list, without trailing slashes.
pub fn parse_masters(list: &str) -> Vec<String> {
    list.split(',')
        .map(|m| m.trim().trim_end_matches('/').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// A standby's refusal: UNAVAILABLE, naming the leader when one is known.
pub fn not_leader(leader: Option<&str>) -> tonic::Status {
    let message = match leader {
        Some(l) => format!("this master is a standby; the leader is {l}"),
        None => "this master is a standby and no leader is elected yet".to_string(),
    };
    let mut status = tonic::Status::unavailable(message);
    if let Some(value) = leader.and_then(|l| l.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// The leader a refusal names, if any.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
}

/// Which master to talk to next.
#[derive(Clone, Debug)]
pub struct MasterList {
    masters: Vec<String>,
    current: usize,
}

impl MasterList {
    /// From a comma-separated list; `None` if it names no master.
    pub fn new(list: &str) -> Option<MasterList> {
        let masters = parse_masters(list);
        (!masters.is_empty()).then_some(MasterList {
            masters,
            current: 0,
        })
    }

    pub fn current(&self) -> &str {
        &self.masters[self.current]
    }

    pub fn all(&self) -> &[String] {
        &self.masters
    }

    /// The current master did not serve: go to the leader it named (added
    /// to the list if new), else to the next one.
    pub fn failed(&mut self, hint: Option<String>) {
        match hint {
            Some(leader) if leader != self.masters[self.current] => {
                self.current = match self.masters.iter().position(|m| *m == leader) {
                    Some(i) => i,
                    None => {
                        self.masters.push(leader);
                        self.masters.len() - 1
                    }
                };
            }
            _ => self.current = (self.current + 1) % self.masters.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_leader_and_the_list_follows_it() {
        let status = not_leader(Some("http://m3:5050"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(leader_hint(&status).as_deref(), Some("http://m3:5050"));
        assert_eq!(leader_hint(&not_leader(None)), None);

        let mut list = MasterList::new("http://m1:5050/, http://m2:5050,").expect("list");
        assert_eq!(list.all(), ["http://m1:5050", "http://m2:5050"]);
        list.failed(None);
        assert_eq!(list.current(), "http://m2:5050");
        list.failed(None);
        assert_eq!(list.current(), "http://m1:5050");
        list.failed(leader_hint(&status));
        assert_eq!(
            list.current(),
            "http://m3:5050",
            "an unknown leader is added"
        );
        assert!(MasterList::new(" , ").is_none());
    }
}
