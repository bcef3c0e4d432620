//! The gateway's own responses, and the one place that decides what a refused request
//! gets: a status, the standard headers it implies (RFC 6750 `WWW-Authenticate` for
//! token problems), and a short JSON body that states the reason without echoing
//! anything the client sent.

use serde::Serialize;

use super::HttpError;
use crate::auth::AuthRefusal;

/// A response written by the gateway rather than a backend. It always closes the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayResponse {
    /// The HTTP status code.
    pub status: u16,
    /// A stable machine-readable code for the body's `error` field.
    pub error: &'static str,
    /// One sentence for a human.
    pub description: String,
    /// The `WWW-Authenticate` challenge, for 400/401/403 about tokens.
    pub challenge: Option<String>,
    /// `Retry-After`, in seconds, for 503.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl GatewayResponse {
    /// 502: no backend could be reached, or it broke the exchange.
    pub fn bad_gateway(description: impl Into<String>) -> Self {
        Self::plain(502, "bad_gateway", description.into())
    }

    /// 503: every backend connection this worker may open is in use.
    pub fn backends_busy() -> Self {
        let mut response = Self::plain(
            503,
            "service_unavailable",
            "the backends are busy; try again shortly".into(),
        );
        response.retry_after = Some(1);
        response
    }

    /// 504: the backend sent nothing for `limit` while a response was due.
    pub fn gateway_timeout(limit: std::time::Duration) -> Self {
        Self::plain(
            504,
            "gateway_timeout",
            format!("the backend did not answer within {}s", limit.as_secs()),
        )
    }

    /// 400, 408 or 431 for a request the HTTP layer refused.
    pub fn for_http_error(error: &HttpError) -> Self {
        match error {
            HttpError::HeadTooLarge => Self::plain(
                431,
                "request_header_fields_too_large",
                "request head too large".into(),
            ),
            HttpError::TooManyHeaders => Self::plain(
                431,
                "request_header_fields_too_large",
                "too many header fields".into(),
            ),
            HttpError::Malformed(reason) => Self::plain(400, "bad_request", (*reason).into()),
            HttpError::HeadTimeout => Self::plain(
                408,
                "request_timeout",
                "the request head did not arrive in time".into(),
            ),
        }
    }

    /// 400, 401 or 403 for a request the token check refused (RFC 6750 §3).
    pub fn for_auth_refusal(refusal: &AuthRefusal, realm: &str) -> Self {
        let realm = realm.replace(['"', '\\'], "");
        let challenge = |code: &str, description: &str| {
            format!(
                "Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{description}\""
            )
        };
        let (status, error, description) = match refusal {
            AuthRefusal::MissingToken => {
                let mut response =
                    Self::plain(401, "missing_token", "a bearer token is required".into());
                response.challenge = Some(format!("Bearer realm=\"{realm}\""));
                return response;
            }
            AuthRefusal::InvalidRequest(reason) => (400, "invalid_request", *reason),
            AuthRefusal::InvalidToken(reason) => (401, "invalid_token", *reason),
            AuthRefusal::InsufficientScope => (
                403,
                "insufficient_scope",
                "the token does not satisfy the access policy",
            ),
        };
        Self {
            status,
            error,
            description: description.into(),
            challenge: Some(challenge(error, description)),
            retry_after: None,
        }
    }

    fn plain(status: u16, error: &'static str, description: String) -> Self {
        Self {
            status,
            error,
            description,
            challenge: None,
            retry_after: None,
        }
    }

    /// The reason phrase for the status line.
    pub fn reason_phrase(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Error",
        }
    }

    /// The full response; `with_body: false` for an answer to HEAD.
    pub fn to_bytes(&self, with_body: bool) -> Vec<u8> {
        let body = Body {
            error: self.error,
            error_description: &self.description,
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n",
            self.status,
            self.reason_phrase(),
            body.len(),
        );
        if let Some(challenge) = &self.challenge {
            head.push_str(&format!("www-authenticate: {challenge}\r\n"));
        }
        if let Some(seconds) = self.retry_after {
            head.push_str(&format!("retry-after: {seconds}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if with_body {
            bytes.extend_from_slice(body.as_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(response: &GatewayResponse) -> (String, serde_json::Value) {
        let text = String::from_utf8(response.to_bytes(true)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_bad_gateway_response_is_complete_http() {
        let (head, body) = split(&GatewayResponse::bad_gateway("no backend could be reached"));
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert_eq!(body["error"], "bad_gateway");
    }

    #[test]
    fn a_missing_token_gets_a_bare_bearer_challenge() {
        let (head, _) = split(&GatewayResponse::for_auth_refusal(
            &AuthRefusal::MissingToken,
            "api.example",
        ));
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(head.ends_with("\r\nwww-authenticate: Bearer realm=\"api.example\""));
    }

    #[test]
    fn token_errors_carry_their_rfc_6750_codes() {
        let invalid =
            GatewayResponse::for_auth_refusal(&AuthRefusal::InvalidToken("token expired"), "r");
        let (head, body) = split(&invalid);
        assert!(head.contains("error=\"invalid_token\", error_description=\"token expired\""));
        assert_eq!(body["error"], "invalid_token");
        let scope = GatewayResponse::for_auth_refusal(&AuthRefusal::InsufficientScope, "r");
        assert_eq!(scope.status, 403);
        assert!(scope.challenge.unwrap().contains("insufficient_scope"));
        let request =
            GatewayResponse::for_auth_refusal(&AuthRefusal::InvalidRequest("two tokens"), "r");
        assert_eq!(request.status, 400);
    }

    #[test]
    fn an_answer_to_head_has_no_body() {
        let bytes = GatewayResponse::bad_gateway("x").to_bytes(false);
        assert!(bytes.ends_with(b"\r\n\r\n"));
    }
}
