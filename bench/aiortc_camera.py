"""A plain aiortc camera speaking peercam's signaling protocol v1 (docs/signaling.md): the
baseline scripts/bench-browser measures peercam against, with the same page, broker and
Chromium. Open access only; for loopback benchmarks, never for a real camera.

It publishes a retained status for its device, answers each offer with aiortc (H.264
forced, every candidate in the answer, as aiortc does), applies trickled candidates and
ends sessions on hangup. The video is a synthetic 1280x720@30 moving pattern, encoded per
viewer by aiortc's own libx264 encoder.

Usage: aiortc_camera.py HOST PORT DEVICE
"""

import asyncio
import json
import sys

import aiomqtt
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.sdp import candidate_from_sdp

WIDTH, HEIGHT, FPS = 1280, 720, 30
PATTERNS = 30


def patterns():
    """A second's worth of luma ramps that move, so every frame differs (as testsrc does)."""
    frames = []
    for shift in range(PATTERNS):
        row = bytes((x + shift * 8) & 0xFF for x in range(WIDTH))
        frames.append(row * HEIGHT)
    return frames


class Pattern(VideoStreamTrack):
    def __init__(self, lumas):
        super().__init__()
        self.lumas = lumas
        self.chroma = bytes([128]) * (WIDTH * HEIGHT // 4)
        self.count = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        frame.planes[0].update(self.lumas[self.count % PATTERNS])
        frame.planes[1].update(self.chroma)
        frame.planes[2].update(self.chroma)
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


class Camera:
    def __init__(self, client, device):
        self.client, self.device = client, device
        self.sessions = {}
        self.lumas = patterns()

    def status(self):
        return {
            "type": "status", "state": "online", "device": self.device, "name": "aiortc camera",
            "version": "aiortc", "protocol": 1, "auth": "open",
            "video": {"codec": "H264", "width": WIDTH, "height": HEIGHT, "fps": FPS},
            "viewers": len(self.sessions), "max_viewers": 16, "ice_servers": [],
        }

    async def publish_status(self):
        await self.client.publish(f"peercam/{self.device}/status", json.dumps(self.status()), qos=1, retain=True)

    async def reply(self, sid, message):
        await self.client.publish(f"peercam/{self.device}/session/{sid}/to-viewer", json.dumps(message), qos=1)

    async def on_message(self, sid, message):
        kind = message.get("type")
        if kind == "offer" and sid not in self.sessions:
            await self.answer(sid, message["sdp"])
        elif kind == "candidate" and sid in self.sessions:
            candidate = message.get("candidate") or {}
            line = candidate.get("candidate", "")
            if line:
                parsed = candidate_from_sdp(line.removeprefix("candidate:"))
                parsed.sdpMid = candidate.get("sdpMid")
                parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
                await self.sessions[sid].addIceCandidate(parsed)
        elif kind == "hangup" and sid in self.sessions:
            await self.sessions.pop(sid).close()
            await self.publish_status()

    async def answer(self, sid, sdp):
        # No ICE servers: aiortc's default is a public STUN server, which a loopback
        # benchmark must never contact.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.sessions[sid] = pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(Pattern(self.lumas))
                transceiver.direction = "sendonly"
                h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
                transceiver.setCodecPreferences(h264)
        await pc.setLocalDescription(await pc.createAnswer())
        await self.reply(sid, {"type": "answer", "sdp": pc.localDescription.sdp})
        await self.publish_status()


async def main(host, port, device):
    will = aiomqtt.Will(f"peercam/{device}/status",
                        json.dumps({"type": "status", "state": "offline", "device": device}), qos=1, retain=True)
    async with aiomqtt.Client(host, port, identifier=f"aiortc-{device}", will=will) as client:
        camera = Camera(client, device)
        await client.subscribe(f"peercam/{device}/session/+/to-camera", qos=1)
        await camera.publish_status()
        print(f"aiortc camera {device} ready", flush=True)
        async for message in client.messages:
            sid = str(message.topic).split("/")[-2]
            # One at a time: a session's candidates wait for its answer.
            try:
                await camera.on_message(sid, json.loads(message.payload))
            except Exception as err:  # a benchmark camera logs and goes on
                print(f"message on {message.topic}: {err!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
