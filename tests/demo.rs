//! `srrrs-edge demo` as a new user meets it: every curl command it prints is run as
//! printed, and does what its comment says; Ctrl-C stops it and removes its files.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, gateway_binary};

#[test]
fn every_printed_curl_command_does_what_it_says() {
    let port = free_port();
    let mut demo = Command::new(gateway_binary())
        .args(["demo", "--port", &port.to_string()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = demo.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();

    let mut folder = None;
    let mut steps: Vec<(String, String)> = Vec::new();
    let mut comment = String::new();
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        if let Some(rest) = line.strip_prefix("srrrs-edge demo is running; files in ") {
            folder = Some(rest.trim().to_owned());
        } else if let Some(text) = line.strip_prefix("# ") {
            comment = text.to_owned();
        } else if line.starts_with("curl ") {
            steps.push((comment.clone(), line.clone()));
            if line.contains("/metrics") {
                break;
            }
        }
    }
    let folder = folder.expect("the demo names its folder");
    assert_eq!(steps.len(), 8, "{steps:?}");

    let expectations: [(&str, &[&str]); 8] = [
        (
            "200",
            &[
                "\"path\": \"/hello\"",
                "x-auth-subject: alice@demo.srrrs",
                "x-auth-department: engineering",
            ],
        ),
        (
            "401 with a Bearer challenge",
            &[
                "HTTP/1.1 401",
                "www-authenticate: Bearer realm=\"localhost\"",
            ],
        ),
        ("expired", &["invalid_token", "token expired"]),
        ("another audience", &["invalid_token", "wrong audience"]),
        ("required claim", &["insufficient_scope"]),
        ("no client certificate", &["certificate required"]),
        ("revoked", &["certificate revoked"]),
        (
            "counters",
            &["srrrs_tls_handshake_failures_total{reason=\"certificate_revoked\"} 1"],
        ),
    ];
    for ((comment, command), (topic, wanted)) in steps.iter().zip(expectations) {
        assert!(
            comment.contains(topic),
            "{comment:?} should be about {topic:?}"
        );
        let output = Command::new("sh")
            .arg("-c")
            .arg(command)
            .output()
            .expect("sh");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        for fragment in wanted {
            assert!(
                text.contains(fragment),
                "{command}\nshould print {fragment:?}, printed:\n{text}"
            );
        }
    }

    let pid = demo.id().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    let exited = eventually(Duration::from_secs(10), || {
        matches!(demo.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "the demo stops on Ctrl-C");
    assert!(demo.wait().expect("status").success());
    assert!(
        !std::path::Path::new(&folder).exists(),
        "the demo removes {folder}"
    );
}
