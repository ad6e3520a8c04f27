//! The HTTP client the framework commands (`agora job`, `agora app`) share:
//! a framework's API through the master (which relays `/{name}/v1/…`),
//! refusals as `error: …` with exit code 1, and spec files.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// A framework's API, through the master.
pub struct FrameworkApi {
    pub base: String,
    pub client: reqwest::Client,
    /// The framework's name (`batch`) and the command that starts it.
    name: &'static str,
    start: &'static str,
}

/// A refusal from the API, printed as `error: …` with exit code 1.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The leading master among `masters` (a comma-separated list): the first
/// that answers says who leads. With one master, that master.
pub async fn leading_master(masters: &str) -> anyhow::Result<String> {
    let list = agora_proto::masters::parse_masters(masters);
    if list.len() <= 1 {
        return Ok(list
            .into_iter()
            .next()
            .unwrap_or_else(|| masters.to_string()));
    }
    agora_proto::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    let mut problems = Vec::new();
    for master in &list {
        let answer = client.get(format!("{master}/api/v1/leader")).send().await;
        match answer {
            Ok(r) => match r.json::<Value>().await {
                Ok(body) => match body["leader"].as_str() {
                    Some(leader) => return Ok(leader.trim_end_matches('/').to_string()),
                    None => problems.push(format!("{master}: no leader elected yet")),
                },
                Err(e) => problems.push(format!("{master}: {e}")),
            },
            Err(e) => problems.push(format!("{master}: {e}")),
        }
    }
    Err(Refused(format!("no master leads: {}", problems.join("; "))).into())
}

/// An HTTP client for the master presenting the user's token (see
/// `credentials`), if there is one.
pub fn authenticated_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let token = super::credentials::client_token(None)?;
    let tls = super::credentials::client_tls()?;
    Ok(agora_sdk::operator::http_client(
        token.as_deref(),
        &tls,
        timeout,
    ))
}

impl FrameworkApi {
    pub async fn new(
        masters: &str,
        name: &'static str,
        start: &'static str,
    ) -> anyhow::Result<Self> {
        let master = leading_master(masters).await?;
        Ok(FrameworkApi {
            base: format!("{}/{name}/v1", master.trim_end_matches('/')),
            client: authenticated_client(Duration::from_secs(30))?,
            name,
            start,
        })
    }

    pub async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let suffix = format!("/{}/v1", self.name);
        let response = request.send().await.map_err(|e| {
            let master = self.base.trim_end_matches(&suffix);
            Refused(format!("cannot reach the master at {master}: {e}"))
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string();
        if status == reqwest::StatusCode::NOT_FOUND
            && message.starts_with(&format!("no such endpoint: /{}/", self.name))
        {
            return Err(Refused(format!(
                "the {name} framework is not running (no framework named `{name}` is registered with the master; start one with `{start}`)",
                name = self.name,
                start = self.start
            ))
            .into());
        }
        Err(Refused(message).into())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.client.post(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(
            self.client
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        )
        .await
    }
}

/// A spec file's text (`-` for stdin) and its content type.
pub fn read_spec(file: &str) -> anyhow::Result<(String, &'static str)> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the spec from stdin")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let content_type = if file.ends_with(".json") {
        "application/json"
    } else {
        "application/toml"
    };
    Ok((text, content_type))
}

/// A refusal ends the command with `error: …` and exit code 1.
pub fn exit_on_refusal(
    result: anyhow::Result<std::process::ExitCode>,
) -> anyhow::Result<std::process::ExitCode> {
    match result {
        Ok(code) => Ok(code),
        Err(e) if e.is::<Refused>() => {
            eprintln!("error: {e}");
            Ok(std::process::ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}

/// A millisecond timestamp as a local-free UTC time.
pub fn when(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// A JSON value as table text.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
