//! What a viewer's SDP offer must offer before the camera builds a peer connection for it:
//! a video section that can receive, with H.264 Constrained Baseline in
//! `packetization-mode=1` among its formats (what the encoder produces, see
//! [`crate::encode::H264_FMTP`]). Pure text inspection of an offer the protocol layer has
//! already validated; it must never touch the WebRTC stack, and never panic on any input.

use std::fmt;

/// Why an offer cannot be answered with the camera's video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferProblem {
    /// No `m=video` section at all.
    NoVideo,
    /// Every video section is disabled (port 0) or does not receive (`sendonly`, `inactive`).
    VideoNotReceived,
    /// No video section offers H.264 Constrained Baseline with `packetization-mode=1`.
    NoConstrainedBaseline,
}

impl fmt::Display for OfferProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OfferProblem::NoVideo => "offer SDP has no video section (m=video)",
            OfferProblem::VideoNotReceived => {
                "offer's video section does not receive (port 0, a=sendonly or a=inactive); \
                 offer it recvonly or sendrecv"
            }
            OfferProblem::NoConstrainedBaseline => {
                "offer has no H.264 video the camera can send (needs Constrained Baseline, \
                 e.g. profile-level-id=42e01f, with packetization-mode=1)"
            }
        })
    }
}

/// Checks `sdp` (an offer) for a receiving video section offering H.264 Constrained
/// Baseline with `packetization-mode=1`; the first problem found otherwise.
pub fn check_offer(sdp: &str) -> Result<(), OfferProblem> {
    let lines: Vec<&str> = sdp.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut sections = lines.split(|line| line.starts_with("m=")).skip(1);
    let media_lines = lines.iter().filter(|line| line.starts_with("m="));
    // The session-level direction (before the first m= line) applies where a section has none.
    let session_direction = lines
        .iter()
        .take_while(|line| !line.starts_with("m="))
        .find_map(|line| direction(line));
    let mut saw_video = false;
    let mut saw_receiving_video = false;
    for media_line in media_lines {
        let attributes = sections.next().unwrap_or_default();
        let mut fields = media_line["m=".len()..].split_ascii_whitespace();
        if fields.next() != Some("video") {
            continue;
        }
        saw_video = true;
        let port = fields.next().unwrap_or("0");
        let _protocol = fields.next();
        let formats: Vec<&str> = fields.collect();
        let section_direction = attributes
            .iter()
            .find_map(|line| direction(line))
            .or(session_direction);
        let receives = !matches!(section_direction, Some("sendonly" | "inactive"));
        if port == "0" || !receives {
            continue;
        }
        saw_receiving_video = true;
        if formats
            .iter()
            .any(|pt| offers_constrained_baseline(attributes, pt))
        {
            return Ok(());
        }
    }
    Err(if !saw_video {
        OfferProblem::NoVideo
    } else if !saw_receiving_video {
        OfferProblem::VideoNotReceived
    } else {
        OfferProblem::NoConstrainedBaseline
    })
}

/// The direction an attribute line sets, if it is one.
fn direction(line: &str) -> Option<&'static str> {
    ["sendrecv", "recvonly", "sendonly", "inactive"]
        .into_iter()
        .find(|d| line.strip_prefix("a=") == Some(*d))
}

/// True when payload type `pt` of a media section is H.264 with `packetization-mode=1`
/// and a Constrained Baseline `profile-level-id`.
fn offers_constrained_baseline(attributes: &[&str], pt: &str) -> bool {
    let value_of = |attribute: &str| {
        attributes.iter().find_map(|line| {
            let rest = line.strip_prefix(attribute)?;
            let (line_pt, value) = rest.split_once(' ')?;
            (line_pt == pt).then_some(value.trim())
        })
    };
    let is_h264 = value_of("a=rtpmap:").is_some_and(|encoding| {
        encoding
            .split('/')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case("H264"))
    });
    if !is_h264 {
        return false;
    }
    let Some(fmtp) = value_of("a=fmtp:") else {
        // No fmtp: packetization-mode 0 and plain Baseline (RFC 6184 defaults).
        return false;
    };
    let parameter = |name: &str| {
        fmtp.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    };
    parameter("packetization-mode") == Some("1")
        && parameter("profile-level-id").is_some_and(is_constrained_baseline)
}

/// True for a `profile-level-id` (six hex digits) that RFC 6184 (table 5) calls Constrained
/// Baseline: Baseline with constraint_set1, Main with constraint_set0, or Extended with
/// constraint_set0 and 1; the level is free (`level-asymmetry-allowed`).
pub fn is_constrained_baseline(profile_level_id: &str) -> bool {
    let Some(bytes) = hex_bytes(profile_level_id) else {
        return false;
    };
    let (profile_idc, iop) = (bytes[0], bytes[1]);
    // The low four constraint bits are reserved here: x1xx0000, 1xxx0000, 11xx0000.
    iop & 0x0f == 0
        && match profile_idc {
            0x42 => iop & 0x40 != 0,
            0x4d => iop & 0x80 != 0,
            0x58 => iop & 0xc0 == 0xc0,
            _ => false,
        }
}

fn hex_bytes(text: &str) -> Option<[u8; 3]> {
    if text.len() != 6 || !text.is_ascii() {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&text[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer captured from headless Chromium 148 (Debian's, the browser tests' one) for
    /// `addTransceiver("video", {direction: "recvonly"})` with H.264 preferred by
    /// `setCodecPreferences` (as the page does) plus a `telemetry` data channel.
    const CHROMIUM_OFFER: &str = "v=0\r\n\
o=- 5517522285901854964 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 103 107 109 115 117 39 41 43\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:DQbC\r\n\
a=ice-pwd:lu0+8RSIAWPdvWN1gvtjYfMN\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 CD:DE:BD:50:81:54:94:3F:18:04:FA:0E:D6:BD:E6:1B:14:56:6F:B7:08:34:DE:46:76:FA:0F:D5:9A:77:1D:75\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 urn:3gpp:video-orientation\r\n\
a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n\
a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type\r\n\
a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing\r\n\
a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space\r\n\
a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:103 H264/90000\r\n\
a=rtcp-fb:103 goog-remb\r\n\
a=rtcp-fb:103 transport-cc\r\n\
a=rtcp-fb:103 ccm fir\r\n\
a=rtcp-fb:103 nack\r\n\
a=rtcp-fb:103 nack pli\r\n\
a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:107 H264/90000\r\n\
a=rtcp-fb:107 goog-remb\r\n\
a=rtcp-fb:107 transport-cc\r\n\
a=rtcp-fb:107 ccm fir\r\n\
a=rtcp-fb:107 nack\r\n\
a=rtcp-fb:107 nack pli\r\n\
a=fmtp:107 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:109 H264/90000\r\n\
a=rtcp-fb:109 goog-remb\r\n\
a=rtcp-fb:109 transport-cc\r\n\
a=rtcp-fb:109 ccm fir\r\n\
a=rtcp-fb:109 nack\r\n\
a=rtcp-fb:109 nack pli\r\n\
a=fmtp:109 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:115 H264/90000\r\n\
a=rtcp-fb:115 goog-remb\r\n\
a=rtcp-fb:115 transport-cc\r\n\
a=rtcp-fb:115 ccm fir\r\n\
a=rtcp-fb:115 nack\r\n\
a=rtcp-fb:115 nack pli\r\n\
a=fmtp:115 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
a=rtpmap:117 H264/90000\r\n\
a=rtcp-fb:117 goog-remb\r\n\
a=rtcp-fb:117 transport-cc\r\n\
a=rtcp-fb:117 ccm fir\r\n\
a=rtcp-fb:117 nack\r\n\
a=rtcp-fb:117 nack pli\r\n\
a=fmtp:117 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
a=rtpmap:39 H264/90000\r\n\
a=rtcp-fb:39 goog-remb\r\n\
a=rtcp-fb:39 transport-cc\r\n\
a=rtcp-fb:39 ccm fir\r\n\
a=rtcp-fb:39 nack\r\n\
a=rtcp-fb:39 nack pli\r\n\
a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f\r\n\
a=rtpmap:41 H264/90000\r\n\
a=rtcp-fb:41 goog-remb\r\n\
a=rtcp-fb:41 transport-cc\r\n\
a=rtcp-fb:41 ccm fir\r\n\
a=rtcp-fb:41 nack\r\n\
a=rtcp-fb:41 nack pli\r\n\
a=fmtp:41 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f\r\n\
a=rtpmap:43 H264/90000\r\n\
a=rtcp-fb:43 goog-remb\r\n\
a=rtcp-fb:43 transport-cc\r\n\
a=rtcp-fb:43 ccm fir\r\n\
a=rtcp-fb:43 nack\r\n\
a=rtcp-fb:43 nack pli\r\n\
a=fmtp:43 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=f4001f\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:DQbC\r\n\
a=ice-pwd:lu0+8RSIAWPdvWN1gvtjYfMN\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 CD:DE:BD:50:81:54:94:3F:18:04:FA:0E:D6:BD:E6:1B:14:56:6F:B7:08:34:DE:46:76:FA:0F:D5:9A:77:1D:75\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=sctp-port:5000\r\n\
a=max-message-size:262144\r\n";

    #[test]
    fn chromium_offers_pass() {
        assert_eq!(check_offer(CHROMIUM_OFFER), Ok(()));
        // LF line endings and lower-case names too.
        let lf = CHROMIUM_OFFER
            .replace("\r\n", "\n")
            .replace("H264/", "h264/");
        assert_eq!(check_offer(&lf), Ok(()));
    }

    #[test]
    fn a_firefox_style_offer_passes() {
        let offer =
            "v=0\r\no=mozilla...THIS_IS_SDPARTA-99.0 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=sendrecv\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 126 97\r\nc=IN IP4 0.0.0.0\r\n\
a=recvonly\r\na=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1\r\n\
a=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1\r\na=mid:0\r\n\
a=rtpmap:126 H264/90000\r\na=rtpmap:97 H264/90000\r\n";
        assert_eq!(check_offer(offer), Ok(()));
    }

    #[test]
    fn offers_without_constrained_baseline_in_mode_1_are_refused() {
        // Only packetization-mode 0 for CB: 109 becomes mode 0; the other mode 1 payloads
        // are plain Baseline (103), Main (117) and High 4:4:4 Predictive (41).
        let mode0 = CHROMIUM_OFFER.replace(
            "packetization-mode=1;profile-level-id=42e01f",
            "packetization-mode=0;profile-level-id=42e01f",
        );
        assert_eq!(
            check_offer(&mode0),
            Err(OfferProblem::NoConstrainedBaseline)
        );
        // VP8 only.
        let vp8 = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(check_offer(vp8), Err(OfferProblem::NoConstrainedBaseline));
        // H.264 without fmtp (defaults: mode 0, Baseline).
        let bare = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        assert_eq!(check_offer(bare), Err(OfferProblem::NoConstrainedBaseline));
        // The rtpmap names a payload type the m= line does not list.
        let unlisted = CHROMIUM_OFFER.replace(" 109 115 ", " 115 ");
        assert_eq!(
            check_offer(&unlisted),
            Err(OfferProblem::NoConstrainedBaseline)
        );
    }

    #[test]
    fn video_must_be_offered_and_receivable() {
        let audio =
            "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(check_offer(audio), Err(OfferProblem::NoVideo));
        for direction in ["sendonly", "inactive"] {
            let offer = CHROMIUM_OFFER.replace("a=recvonly", &format!("a={direction}"));
            assert_eq!(check_offer(&offer), Err(OfferProblem::VideoNotReceived));
        }
        let disabled = CHROMIUM_OFFER.replace("m=video 9 ", "m=video 0 ");
        assert_eq!(check_offer(&disabled), Err(OfferProblem::VideoNotReceived));
        // A session-level direction applies to a section without its own.
        let session_level = CHROMIUM_OFFER
            .replace("a=recvonly\r\n", "")
            .replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        assert_eq!(
            check_offer(&session_level),
            Err(OfferProblem::VideoNotReceived)
        );
        // sendrecv (a browser's addTrack default) receives.
        let sendrecv = CHROMIUM_OFFER.replace("a=recvonly", "a=sendrecv");
        assert_eq!(check_offer(&sendrecv), Ok(()));
    }

    #[test]
    fn constrained_baseline_follows_rfc_6184() {
        for id in [
            "42e01f", "42E01F", "42c01f", "42401f", "42e034", "4d801f", "4dc01f", "58c01f",
        ] {
            assert!(is_constrained_baseline(id), "{id}");
        }
        for id in [
            "42001f", "4d001f", "4d401f", "58801f", "64001f", "640c1f", "42e11f", "42e0",
            "42e01f00", "zze01f", "", "42é01",
        ] {
            assert!(!is_constrained_baseline(id), "{id}");
        }
    }

    #[test]
    fn the_encoders_own_fmtp_is_constrained_baseline() {
        let offer = format!(
            "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 {}\r\n",
            crate::encode::H264_FMTP
        );
        assert_eq!(check_offer(&offer), Ok(()));
    }

    #[test]
    fn odd_input_never_panics() {
        for sdp in [
            "",
            "m=",
            "m=video",
            "m=video 9",
            "v=0\nm=video 9 X 102\na=rtpmap:102\na=fmtp:102\na=fmtp:102 ;;==;\n",
            "v=0\nm=video 9 X 102\na=rtpmap:102 H264\na=fmtp:102 packetization-mode=1;profile-level-id=é2e01\n",
            "\u{0}m=video 9 X 1",
        ] {
            assert!(check_offer(sdp).is_err(), "{sdp:?}");
        }
    }
}
