//! Signaling: the v1 protocol (pure), its MQTT transport, and the embedded broker.
//! Signaling carries offers, answers and candidates only; it must never carry media.

pub mod broker;
pub mod mqtt;
pub mod protocol;
