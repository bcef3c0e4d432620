//! The gateway's own responses: a status, the standard headers it implies, and a short
//! JSON body that states the reason without echoing anything the client sent.

use serde::Serialize;

/// A response written by the gateway rather than a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayResponse {
    /// The HTTP status code.
    pub status: u16,
    /// A stable machine-readable code for the body's `error` field.
    pub error: &'static str,
    /// One sentence for a human.
    pub description: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl GatewayResponse {
    /// 502: no backend could be reached.
    pub fn bad_gateway(description: impl Into<String>) -> Self {
        Self {
            status: 502,
            error: "bad_gateway",
            description: description.into(),
        }
    }

    /// The reason phrase for the status line.
    pub fn reason_phrase(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Error",
        }
    }

    /// The full response, closing the connection after it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_string(&Body {
            error: self.error,
            error_description: &self.description,
        })
        .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
            self.status,
            self.reason_phrase(),
            body.len(),
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_gateway_response_is_complete_http() {
        let bytes = GatewayResponse::bad_gateway("no backend could be reached").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "bad_gateway");
    }
}
