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

    /// An offer as Chromium 131 makes it for `addTransceiver("video", {direction:
    /// "recvonly"})` plus a data channel, H.264 first by `setCodecPreferences` (as the
    /// page does), its ICE and DTLS values replaced.
    const CHROMIUM_OFFER: &str = "v=0\r\n\
o=- 4127398463946530531 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102 103 104 105 106 107 108 109 127 125 39 40 45 46\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Yx3f\r\n\
a=ice-pwd:cnkZ8mN3OeQWk1m2ZpQk8Vn5\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5B:3C:0A:9E:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 urn:3gpp:video-orientation\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:102 H264/90000\r\n\
a=rtcp-fb:102 goog-remb\r\n\
a=rtcp-fb:102 transport-cc\r\n\
a=rtcp-fb:102 ccm fir\r\n\
a=rtcp-fb:102 nack\r\n\
a=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\n\
a=fmtp:103 apt=102\r\n\
a=rtpmap:104 H264/90000\r\n\
a=rtcp-fb:104 ccm fir\r\n\
a=rtcp-fb:104 nack\r\n\
a=rtcp-fb:104 nack pli\r\n\
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:105 rtx/90000\r\n\
a=fmtp:105 apt=104\r\n\
a=rtpmap:106 H264/90000\r\n\
a=rtcp-fb:106 ccm fir\r\n\
a=rtcp-fb:106 nack\r\n\
a=rtcp-fb:106 nack pli\r\n\
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:107 rtx/90000\r\n\
a=fmtp:107 apt=106\r\n\
a=rtpmap:108 H264/90000\r\n\
a=rtcp-fb:108 ccm fir\r\n\
a=rtcp-fb:108 nack\r\n\
a=rtcp-fb:108 nack pli\r\n\
a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
a=rtpmap:109 rtx/90000\r\n\
a=fmtp:109 apt=108\r\n\
a=rtpmap:127 H264/90000\r\n\
a=rtcp-fb:127 ccm fir\r\n\
a=rtcp-fb:127 nack\r\n\
a=rtcp-fb:127 nack pli\r\n\
a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
a=rtpmap:125 rtx/90000\r\n\
a=fmtp:125 apt=127\r\n\
a=rtpmap:39 H264/90000\r\n\
a=rtcp-fb:39 ccm fir\r\n\
a=rtcp-fb:39 nack\r\n\
a=rtcp-fb:39 nack pli\r\n\
a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f\r\n\
a=rtpmap:40 rtx/90000\r\n\
a=fmtp:40 apt=39\r\n\
a=rtpmap:45 H264/90000\r\n\
a=rtcp-fb:45 ccm fir\r\n\
a=rtcp-fb:45 nack\r\n\
a=rtcp-fb:45 nack pli\r\n\
a=fmtp:45 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n\
a=rtpmap:46 rtx/90000\r\n\
a=fmtp:46 apt=45\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Yx3f\r\n\
a=ice-pwd:cnkZ8mN3OeQWk1m2ZpQk8Vn5\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5B:3C:0A:9E:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC\r\n\
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
        // Only packetization-mode 0 for CB: 106 becomes mode 0; the other mode 1 payloads
        // are plain Baseline (102), Main (127) and High (45).
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
        let unlisted = CHROMIUM_OFFER.replace(" 106 107 ", " 107 ");
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
