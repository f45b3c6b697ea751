//! Signaling: the v1 protocol (pure), its transports — MQTT (trickle, through any broker)
//! and WHEP (HTTP, answer with every candidate), the MQTT client's transport security
//! (TLS, credentials, failure lines naming the key to fix) — and the embedded broker. Transports
//! translate their wire formats for the session core; they must never carry media or
//! decide anything about a session. The MQTT transport keeps its retained status with
//! `retained_status`, which tells its own echoes from forgeries. The embedded broker has
//! its users (`broker_users`) and doors over WebSocket and TLS (`relay`).

pub mod broker;
pub mod broker_users;
pub mod mqtt;
pub mod mqtt_security;
pub mod protocol;
pub mod relay;
pub mod retained_status;
pub mod whep;
