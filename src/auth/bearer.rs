//! Finding the bearer token in a request's `Authorization` fields (RFC 6750 §2.1).

use super::AuthRefusal;

/// The token of the one `Authorization: Bearer <token>` field among `values`.
pub fn bearer_token<'a>(values: &[&'a [u8]]) -> Result<&'a str, AuthRefusal> {
    let value = match values {
        [] => return Err(AuthRefusal::MissingToken),
        [one] => *one,
        _ => {
            return Err(AuthRefusal::InvalidRequest(
                "more than one Authorization header",
            ))
        }
    };
    let text = std::str::from_utf8(value)
        .map_err(|_| AuthRefusal::InvalidRequest("malformed Authorization header"))?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme carries no bearer token: challenge for one (RFC 6750 §3.1).
        return Err(AuthRefusal::MissingToken);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || !is_b64token(token) {
        return Err(AuthRefusal::InvalidRequest("malformed bearer credentials"));
    }
    Ok(token)
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(&[b"Bearer abc.def.ghi"]), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(&[b"bearer abc.def.ghi"]), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(&[b"BEARER  abc"]), Ok("abc"));
    }

    #[test]
    fn no_bearer_token_is_a_missing_token() {
        assert_eq!(bearer_token(&[]), Err(AuthRefusal::MissingToken));
        assert_eq!(
            bearer_token(&[b"Basic dXNlcjpwYXNz"]),
            Err(AuthRefusal::MissingToken)
        );
    }

    #[test]
    fn several_credentials_are_an_invalid_request() {
        for values in [
            &[&b"Bearer a"[..], &b"Bearer b"[..]][..],
            &[b"Bearer a, Bearer b"],
            &[b"Bearer a b"],
            &[b"Bearer "],
            &[b"Bearer a\"b"],
        ] {
            assert!(
                matches!(bearer_token(values), Err(AuthRefusal::InvalidRequest(_))),
                "{values:?}"
            );
        }
    }
}
