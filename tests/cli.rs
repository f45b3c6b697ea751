//! The command line as an admin uses it: `check-config` accepts the reference file and
//! rejects mistakes with the key and the reason, and a bad config never starts the agent.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn peercam(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_peercam"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("peercam-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_accepts_the_reference_file() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/config/peercam.toml");
    let (code, out) = peercam(&["check-config", "--config", reference]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
}

#[test]
fn check_config_names_the_key_and_the_reason() {
    let typo = write_config("typo", "[video]\nwidth = 640\nfsp = 25\n");
    let (code, out) = peercam(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        out.contains(":3:1: video.fsp: unknown key (expected one of: source, width"),
        "{out}"
    );

    // What `run` cannot use, `check-config` (the unit's ExecStartPre) refuses already.
    let format = write_config(
        "format",
        "[video]\nsource = \"/dev/video0\"\nformat = \"ABCD\"\n",
    );
    let (code, out) = peercam(&["check-config", "--config", format.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        out.contains("video.format: must be \"auto\" or a fourcc peercam can use: H264, YUYV"),
        "{out}"
    );

    // The files the broker connection needs are read: there, private, and parsable.
    let password =
        std::env::temp_dir().join(format!("peercam-cli-{}-password", std::process::id()));
    std::fs::write(&password, "s3cret\n").unwrap();
    let tls = |extra: &str| {
        format!("[mqtt]\nbroker = \"mqtts://broker.lan\"\nusername = \"cam\"\npassword_file = {:?}\n{extra}", password.display().to_string())
    };
    for (name, mode, text, message) in [
        (
            "password-mode",
            0o644,
            tls(""),
            "is readable by group or others (mode 644)",
        ),
        (
            "ca-missing",
            0o600,
            tls("ca_file = \"/nonexistent/ca.pem\"\n"),
            "mqtt.ca_file: /nonexistent/ca.pem: cannot read it",
        ),
    ] {
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
        let path = write_config(name, &text);
        let (code, out) = peercam(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(message), "{out}");
        assert!(!out.contains("s3cret"), "{out}");
    }

    let range = write_config("range", "[webrtc]\nmax_viewers = 0\n");
    let (code, out) = peercam(&["check-config", "--config", range.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        out.contains("webrtc.max_viewers: must be between 1 and 64 (got 0)"),
        "{out}"
    );
}

#[test]
fn the_agent_refuses_to_start_on_a_bad_config() {
    let bad = write_config("bad", "[mqtt]\nbroker = \"wss://broker.lan/mqtt\"\n");
    let (code, out) = peercam(&["--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("mqtt.broker"), "{out}");
    let (code, out) = peercam(&["--config", "/nonexistent/peercam.toml"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("/nonexistent/peercam.toml: cannot read"),
        "{out}"
    );
}
