//! What a framework may read from the master's operator API, through one
//! client: its tasks' measured usage and the agents' resources and
//! attributes (for admission checks). Frameworks never build operator URLs
//! themselves.

use std::time::Duration;

use agora_proto::tls::ClientTls;
use serde::Deserialize;

use crate::SdkError;

/// A running task's usage, as its agent last reported it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TaskUsage {
    pub task_id: String,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// An agent as constraints and admission checks see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentSummary {
    pub attributes: crate::placement::AgentAttributes,
    /// Total resources by name (`cpus`, `mem`, `disk`).
    pub total: std::collections::BTreeMap<String, f64>,
    /// Whether it is draining (no new offers from it).
    pub draining: bool,
}

/// A client of the master's operator API.
#[derive(Clone)]
pub struct MasterApi {
    /// Every master: a standby redirects to the leader, a dead one is
    /// skipped.
    masters: Vec<String>,
    client: reqwest::Client,
}

/// An HTTP client for the master that presents `token` (if any) on every
/// request.
pub fn http_client(token: Option<&str>, tls: &ClientTls, timeout: Duration) -> reqwest::Client {
    client_builder(token, tls)
        .timeout(timeout)
        .build()
        .unwrap_or_default()
}

/// [`http_client`] without an overall timeout, for event streams.
pub fn streaming_client(token: Option<&str>, tls: &ClientTls) -> reqwest::Client {
    client_builder(token, tls).build().unwrap_or_default()
}

/// A client presenting `token`, trusting `tls`'s CA for https (and
/// presenting its certificate, if it has one).
fn client_builder(token: Option<&str>, tls: &ClientTls) -> reqwest::ClientBuilder {
    agora_proto::tls::install_default_provider();
    let mut builder = reqwest::Client::builder().default_headers(bearer_headers(token));
    if let Some(pem) = &tls.ca_pem {
        match reqwest::Certificate::from_pem_bundle(pem) {
            Ok(certificates) => {
                for certificate in certificates {
                    builder = builder.add_root_certificate(certificate);
                }
            }
            Err(e) => tracing::error!("the CA bundle: {e}"),
        }
    }
    if let Some((certificate, key)) = &tls.identity {
        let mut pem = certificate.clone();
        pem.extend_from_slice(key);
        match reqwest::Identity::from_pem(&pem) {
            Ok(identity) => builder = builder.identity(identity),
            Err(e) => tracing::error!("the client certificate: {e}"),
        }
    }
    builder
}

fn bearer_headers(token: Option<&str>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(mut value) = token
        .filter(|t| !t.is_empty())
        .and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
    {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    headers
}

/// Tasks per page when listing.
const PAGE: usize = 1000;

impl MasterApi {
    /// A client for the masters at `masters` (`http://host:port`, or a
    /// comma-separated list), presenting `token` if given.
    pub fn new(masters: &str, token: Option<&str>, tls: &ClientTls) -> MasterApi {
        MasterApi {
            masters: agora_proto::masters::parse_masters(masters),
            client: http_client(token, tls, Duration::from_secs(10)),
        }
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, SdkError> {
        let mut last = SdkError::Operator {
            url: path.to_string(),
            message: "no master given".into(),
        };
        for base in &self.masters {
            let url = format!("{base}{path}");
            let fail = |e: String| SdkError::Operator {
                url: url.clone(),
                message: e,
            };
            let response = match self.client.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = fail(e.to_string());
                    continue;
                }
            };
            if !response.status().is_success() {
                last = fail(format!("answered {}", response.status()));
                continue;
            }
            return response.json().await.map_err(|e| fail(e.to_string()));
        }
        Err(last)
    }

    /// The usage of the framework's running tasks.
    pub async fn task_usage(&self, framework_id: &str) -> Result<Vec<TaskUsage>, SdkError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .get_json(&format!(
                    "/api/v1/tasks?framework={framework_id}&state=TASK_RUNNING&offset={offset}&limit={PAGE}"
                ))
                .await?;
            let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
            for t in &tasks {
                let usage = &t["usage"];
                if usage.is_null() {
                    continue;
                }
                out.push(TaskUsage {
                    task_id: t["id"].as_str().unwrap_or_default().to_string(),
                    cpu_seconds: usage["cpu_seconds"].as_f64().unwrap_or(0.0),
                    memory_bytes: usage["memory_bytes"].as_u64().unwrap_or(0),
                });
            }
            offset += tasks.len();
            let total = page["total"].as_u64().unwrap_or(0) as usize;
            if tasks.is_empty() || offset >= total {
                return Ok(out);
            }
        }
    }

    /// Every agent the master knows.
    pub async fn agents(&self) -> Result<Vec<AgentSummary>, SdkError> {
        let body = self.get_json("/api/v1/agents").await?;
        let list = body["agents"]
            .as_array()
            .or_else(|| body.as_array())
            .cloned()
            .unwrap_or_default();
        Ok(list
            .iter()
            .map(|a| AgentSummary {
                attributes: crate::placement::AgentAttributes {
                    agent_id: a["id"].as_str().unwrap_or_default().to_string(),
                    hostname: a["hostname"].as_str().unwrap_or_default().to_string(),
                    address: String::new(),
                    attributes: a["attributes"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                                .collect()
                        })
                        .unwrap_or_default(),
                },
                total: a["resources"]["total"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default(),
                draining: a["draining"].as_bool().unwrap_or(false),
            })
            .collect())
    }
}
