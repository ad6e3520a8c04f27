//! A small etcd v3 client over etcd's JSON gateway (`/v3/...` on the client
//! port): ranges, transactions and leases — what the store and leader
//! election need. Keys and values travel base64-encoded; 64-bit numbers as
//! strings. Requests go to the first endpoint that answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: no endpoint answered ({0})")]
    Unreachable(String),
    #[error("etcd {endpoint}{path}: {message}")]
    Refused {
        endpoint: String,
        path: &'static str,
        message: String,
        /// The gRPC code etcd gave (5 = not found, e.g. an expired lease).
        code: i64,
    },
    #[error("etcd {path}: unexpected answer: {answer}")]
    Malformed { path: &'static str, answer: String },
    #[error("etcd: `{0}` is not a list of http(s) URLs")]
    BadEndpoints(String),
}

/// gRPC's NOT_FOUND, as etcd reports an unknown lease.
pub const NOT_FOUND: i64 = 5;

/// One key's value and revisions.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
}

/// What a transaction did.
#[derive(Debug)]
pub struct TxnResult {
    pub succeeded: bool,
    /// What the branch taken read.
    pub read: Vec<KeyValue>,
    /// The store's revision after it (a put's revision when it wrote).
    pub revision: i64,
}

/// A client of one etcd cluster; clones share connections.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Arc<Vec<String>>,
    http: reqwest::Client,
    /// The endpoint that answered last: tried first.
    preferred: Arc<AtomicUsize>,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The key just past every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A transaction's comparison: `key` was created at `revision` (0: the key
/// does not exist).
pub fn created_at(key: &str, revision: i64) -> Value {
    json!({
        "key": b64(key.as_bytes()),
        "result": "EQUAL",
        "target": "CREATE",
        "create_revision": revision.to_string(),
    })
}

/// A transaction's put; `lease` 0 for none.
pub fn put(key: &str, value: &[u8], lease: i64) -> Value {
    json!({ "request_put": {
        "key": b64(key.as_bytes()),
        "value": b64(value),
        "lease": lease.to_string(),
    }})
}

/// A transaction's delete of one key.
pub fn delete(key: &str) -> Value {
    json!({ "request_delete_range": { "key": b64(key.as_bytes()) } })
}

/// A transaction's read of one key.
pub fn get(key: &str) -> Value {
    json!({ "request_range": { "key": b64(key.as_bytes()) } })
}

fn key_values(range: &Value) -> Vec<KeyValue> {
    let decode = |v: &Value| B64.decode(v.as_str().unwrap_or("")).unwrap_or_default();
    range["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| KeyValue {
                    key: String::from_utf8_lossy(&decode(&kv["key"])).into_owned(),
                    value: decode(&kv["value"]),
                    create_revision: int(&kv["create_revision"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Etcd {
    /// A client of the etcd cluster at `endpoints`
    /// (`http://h1:2379,http://h2:2379`).
    pub fn new(endpoints: &str) -> Result<Etcd, EtcdError> {
        let list: Vec<String> = endpoints
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if list.is_empty()
            || list
                .iter()
                .any(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(EtcdError::BadEndpoints(endpoints.to_string()));
        }
        // The HTTP client takes the process's TLS provider: make it ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
        Ok(Etcd {
            endpoints: Arc::new(list),
            http,
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn call(&self, path: &'static str, body: Value) -> Result<Value, EtcdError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for i in 0..self.endpoints.len() {
            let index = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let response = match self
                .http
                .post(format!("{endpoint}{path}"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last_error = format!("{endpoint}: {e}");
                    continue;
                }
            };
            let answer: Value = match response.json().await {
                Ok(v) => v,
                Err(e) => {
                    last_error = format!("{endpoint}: {e}");
                    continue;
                }
            };
            if let Some(message) = answer.get("error").or_else(|| answer.get("message")) {
                let code = int(&answer["code"]);
                // 14 = UNAVAILABLE: that member cannot serve (no quorum, or
                // it is stopping); another may.
                if code == 14 {
                    last_error = format!("{endpoint}: {message}");
                    continue;
                }
                return Err(EtcdError::Refused {
                    endpoint: endpoint.clone(),
                    path,
                    message: message.as_str().unwrap_or_default().to_string(),
                    code,
                });
            }
            self.preferred.store(index, Ordering::Relaxed);
            return Ok(answer);
        }
        Err(EtcdError::Unreachable(last_error))
    }

    /// Every key starting with `prefix`, in key order.
    pub async fn range_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let answer = self
            .call(
                "/v3/kv/range",
                json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) }),
            )
            .await?;
        Ok(key_values(&answer))
    }

    /// One key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let answer = self
            .call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))
            .await?;
        Ok(key_values(&answer).pop())
    }

    /// If every comparison holds, applies `success`, else `failure`.
    pub async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<TxnResult, EtcdError> {
        let answer = self
            .call(
                "/v3/kv/txn",
                json!({ "compare": compare, "success": success, "failure": failure }),
            )
            .await?;
        let succeeded = answer["succeeded"].as_bool().unwrap_or(false);
        let read = answer["responses"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .flat_map(|r| key_values(&r["response_range"]))
                    .collect()
            })
            .unwrap_or_default();
        Ok(TxnResult {
            succeeded,
            read,
            revision: int(&answer["header"]["revision"]),
        })
    }

    /// A new lease of `ttl` (etcd may round it up); returns its id and TTL.
    pub async fn grant(&self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let answer = self
            .call("/v3/lease/grant", json!({ "TTL": seconds.to_string() }))
            .await?;
        let id = int(&answer["ID"]);
        if id == 0 {
            return Err(EtcdError::Malformed {
                path: "/v3/lease/grant",
                answer: answer.to_string(),
            });
        }
        Ok((id, Duration::from_secs(int(&answer["TTL"]).max(1) as u64)))
    }

    /// Renews a lease; `None` if it has expired (or was revoked).
    pub async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        let ttl = int(&answer["result"]["TTL"]);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Ends a lease at once: its keys go with it.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self
            .call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await
        {
            Err(EtcdError::Refused {
                code: NOT_FOUND, ..
            }) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_prefix() {
        assert_eq!(prefix_end("/a/b/"), b"/a/b0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn endpoints_must_be_urls() {
        assert!(Etcd::new("http://a:2379, http://b:2379").is_ok());
        assert!(matches!(
            Etcd::new("a:2379"),
            Err(EtcdError::BadEndpoints(_))
        ));
        assert!(matches!(Etcd::new(" , "), Err(EtcdError::BadEndpoints(_))));
    }
}
