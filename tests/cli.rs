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
    let bad = write_config("bad", "[mqtt]\nbroker = \"ws://broker.lan/mqtt\"\n");
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

#[test]
fn protected_mode_refuses_an_open_broker_beyond_loopback_and_allow_anonymous_warns() {
    let open = write_config("open", "[broker]\nlisten = \"0.0.0.0:1883\"\n");
    let (code, out) = peercam(&["check-config", "--config", open.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("broker.listen: 0.0.0.0:1883"), "{out}");
    assert!(out.contains("broker.users is empty"), "{out}");
    // `run` refuses the same file before starting anything.
    let (code, out) = peercam(&["--config", open.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("broker.listen") && out.contains("broker.users"),
        "{out}"
    );

    let anonymous = write_config(
        "anonymous",
        "[broker]\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = true\n",
    );
    let (code, out) = peercam(&["check-config", "--config", anonymous.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "warning: broker.allow_anonymous = true: anyone who reaches broker.listen 0.0.0.0:1883"
        ),
        "{out}"
    );
    assert!(out.contains("configuration is valid"), "{out}");
}

#[test]
fn cert_writes_a_pair_check_config_loads_and_a_mismatched_key_is_named() {
    let dir = std::env::temp_dir().join(format!("peercam-cli-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let make = |cert: &str, key: &str| {
        peercam(&[
            "cert",
            "--host",
            "camera.lan",
            "--host",
            "192.168.1.20",
            "--cert",
            cert,
            "--key",
            key,
        ])
    };
    let (code, out) = make(&path("a.pem"), &path("a.key"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SHA-256 fingerprint: "), "{out}");
    let (code, out) = make(&path("a.pem"), &path("a.key"));
    assert_ne!(code, 0, "existing files stay unless --force: {out}");
    assert_eq!(make(&path("b.pem"), &path("b.key")).0, 0);

    let tls = |cert: &str, key: &str| {
        let config = write_config(
            "tls",
            &format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"),
        );
        peercam(&["check-config", "--config", config.to_str().unwrap()])
    };
    let (code, out) = tls(&path("a.pem"), &path("a.key"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = tls(&path("a.pem"), &path("b.key"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("tls.key_file: "), "{out}");
    assert!(
        out.contains("is not a key for the certificate in tls.cert_file"),
        "{out}"
    );
    let (code, out) = tls(&path("missing.pem"), &path("a.key"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("tls.cert_file: "), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}
