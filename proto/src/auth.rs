//! Credentials on the client side: every gRPC call to a master carries
//! `authorization: Bearer <token>` (agents, frameworks, tools alike).

use tonic::metadata::{Ascii, MetadataValue};

/// Adds the bearer token, if any, to every request of a gRPC client.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

/// A token that cannot travel in a header.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the token has characters a header cannot carry (use printable ASCII)")]
pub struct InvalidToken;

impl BearerToken {
    /// `None` or an empty token: no header.
    pub fn new(token: Option<&str>) -> Result<BearerToken, InvalidToken> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| InvalidToken),
        }
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Whether a presented token is the expected one, in time that does not
/// depend on where they differ.
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a token file: the token is its first line, trimmed.
pub fn read_token_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn the_token_rides_in_the_authorization_header() {
        let mut token = BearerToken::new(Some("abc")).expect("valid");
        let request = token.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer abc"))
        );
        let mut none = BearerToken::new(Some("  ")).expect("empty is none");
        let request = none.call(tonic::Request::new(())).expect("passes");
        assert!(request.metadata().get("authorization").is_none());
        assert_eq!(
            BearerToken::new(Some("a\nb")).map(|_| ()),
            Err(InvalidToken)
        );
        assert!(!format!("{token:?}").contains("abc"), "never printed");
    }
}
