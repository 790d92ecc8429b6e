"""Codecs and the containers they play in: one table that the writer, the CLI's checks and default paths all ask.

Defaults are what plays everywhere: h264/h265 in MP4 (h265 tagged `hvc1`, which Apple players require), FFV1 in
Matroska (no player accepts it in MP4), VP9/AV1 in WebM, GIF with a palette per frame. 4:2:0 video is converted
with the BT.709 matrix at limited range and tagged so (primaries, transfer, matrix, range): untagged SD-sized video
is read as BT.601 by most players, which shifts the colours.
"""

from dataclasses import dataclass, field

from cfcli.errors import CfError

BT709 = 1  # ITU-T H.273 code point for primaries, transfer and matrix
LIMITED = 1  # AVCOL_RANGE_MPEG


@dataclass(frozen=True)
class Codec:
    name: str
    encoders: tuple[str, ...]  # the first one PyAV's ffmpeg has is used
    pix_fmt: str
    suffixes: tuple[str, ...]  # containers it plays in; the first is the default
    tag: str | None = None  # the sample entry to write in MP4/MOV
    options: dict = field(default_factory=dict)  # encoder options; "{crf}" is replaced by --crf
    lossless: bool = False

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def tagged_bt709(self) -> bool:
        return self.pix_fmt == "yuv420p"

    def encoder_options(self, crf: int) -> dict:
        return {k: v.format(crf=crf) for k, v in self.options.items()}


# A short encoder lookahead keeps the file close behind the generator (x264/x265 default to 40+ frames).
TABLE = (
    Codec("h264", ("libx264",), "yuv420p", (".mp4", ".mkv", ".mov"),
          options={"crf": "{crf}", "x264-params": "rc-lookahead=8:log-level=error"}),
    Codec("h265", ("libx265",), "yuv420p", (".mp4", ".mkv", ".mov"), tag="hvc1",
          options={"crf": "{crf}", "x265-params": "rc-lookahead=8:log-level=error"}),
    Codec("ffv1", ("ffv1",), "bgr0", (".mkv",), lossless=True),
    Codec("vp9", ("libvpx-vp9",), "yuv420p", (".webm", ".mkv"),
          options={"crf": "{crf}", "b": "0", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
    Codec("av1", ("libsvtav1", "libaom-av1"), "yuv420p", (".webm", ".mkv", ".mp4"),
          options={"crf": "{crf}", "preset": "10"}),
    Codec("gif", ("gif",), "pal8", (".gif",)),
)


# Decoders PyAV may pick, by the format they decode (ffprobe's codec_name).
FORMAT_OF_DECODER = {"libdav1d": "av1", "libaom-av1": "av1", "libvpx-vp9": "vp9", "libvpx": "vp8"}


def format_name(decoder: str) -> str:
    return FORMAT_OF_DECODER.get(decoder, decoder)


def available() -> dict[str, Codec]:
    """The codecs this PyAV build can encode, by name."""
    import av

    return {c.name: c for c in TABLE if any(e in av.codecs_available for e in c.encoders)}


def encoder(codec: Codec) -> str:
    import os

    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a 20-line banner to stderr otherwise; errors only
    return next(e for e in codec.encoders if e in av.codecs_available)


def get(name: str) -> Codec:
    codecs = available()
    if name not in codecs:
        known = [c.name for c in TABLE]
        what = f"codec {name!r} is not in this PyAV build's ffmpeg" if name in known else f"unknown codec {name!r}"
        raise CfError(what, f"use one of: {', '.join(codecs)}")
    return codecs[name]


def for_suffix(suffix: str) -> str | None:
    """The codec a bare `--out x.SUFFIX` means (`.gif` → gif, `.webm` → vp9); None for general containers."""
    return {".gif": "gif", ".webm": "vp9"}.get(suffix.lower())


def check_pair(codec: Codec, suffix: str) -> None:
    """Refuse a codec in a container that cannot hold it or that players refuse (FFV1 in MP4)."""
    if suffix.lower() not in codec.suffixes:
        raise CfError(f"{codec.name} does not belong in a {suffix or 'suffix-less'} file",
                      f"use an --out path ending in {' or '.join(codec.suffixes)}, or another --codec")
