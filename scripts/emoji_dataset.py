#!/usr/bin/env python3
"""Builds a labelled colour image folder from the emoji images of the npm packages
emoji-datasource-google and emoji-datasource-twitter (64x64 PNG, Apache-2.0 / CC-BY-4.0).

The class of an image is its emoji's Unicode category (Smileys & Emotion, People & Body,
Animals & Nature, Food & Drink, Travel & Places, Activities, Objects, Symbols, Flags; the
five "Component" images are left out). Skin-tone variants are left out (near duplicates).
Both vendors' drawings of one emoji go to the same split, chosen by a hash of the emoji's
code: a fifth of the emoji are the test split. Transparent pixels are composited onto white
and the images written as 8-bit RGB PNG (pathguard ignores alpha, and these files keep
arbitrary colours under their transparent pixels).

Usage: emoji_dataset.py PACKAGE_DIR [PACKAGE_DIR ...] OUT_DIR
where each PACKAGE_DIR is an extracted package (holding emoji.json and img/<vendor>/64/).
Standard library only: no PIL on a fresh machine.
"""

import hashlib
import json
import os
import struct
import sys
import zlib

TEST_SHARE = 5  # one emoji in five goes to the test split


def read_png(path):
    """(width, height, RGBA bytes) of a non-interlaced PNG: 8-bit, or 1/2/4-bit grey or palette."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, palette, alpha = 8, b"", None, None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            alpha = body
        elif kind == b"IDAT":
            idat += body
    packed = depth < 8 and colour in (0, 3)
    if interlace != 0 or (depth != 8 and not packed):
        raise ValueError(f"{path}: {depth}-bit colour type {colour} or interlaced PNG")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    stride = (width * depth + 7) // 8 if packed else width * channels
    rows, prev, p = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[p], bytearray(raw[p + 1:p + 1 + stride])
        p += 1 + stride
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = prev[x]
            corner = prev[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + ((left + up) >> 1)) & 255
            elif kind == 4:
                pa, pb, pc = abs(up - corner), abs(left - corner), abs(left + up - 2 * corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[x] = (line[x] + pred) & 255
        prev = line
        if packed:  # one sample per byte, scaled to 8 bits for grey
            per_byte, mask = 8 // depth, (1 << depth) - 1
            samples = [(line[x // per_byte] >> (8 - depth * (x % per_byte + 1))) & mask for x in range(width)]
            line = bytearray(v * 255 // mask if colour == 0 else v for v in samples)
        rows.append(line)
    rgba = bytearray()
    for line in rows:
        for x in range(width):
            px = line[x * channels:(x + 1) * channels]
            if colour == 6:
                rgba += px
            elif colour == 2:
                rgba += px + b"\xff"
            elif colour == 0:
                rgba += bytes([px[0]] * 3) + b"\xff"
            elif colour == 4:
                rgba += bytes([px[0]] * 3) + px[1:2]
            else:  # palette
                i = px[0]
                rgba += palette[3 * i:3 * i + 3] + bytes([alpha[i] if alpha and i < len(alpha) else 255])
    return width, height, rgba


def write_rgb_png(path, width, height, rgb):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes(rgb[y * width * 3:(y + 1) * width * 3]) for y in range(height))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


def on_white(rgba):
    rgb = bytearray()
    for k in range(0, len(rgba), 4):
        a = rgba[k + 3]
        rgb += bytes((rgba[k + c] * a + 255 * (255 - a) + 127) // 255 for c in range(3))
    return rgb


def slug(category):
    return category.lower().replace(" & ", "-").replace(" ", "-")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    packages, out = sys.argv[1:-1], sys.argv[-1]
    written = {}
    for package in packages:
        emoji = json.load(open(os.path.join(package, "emoji.json")))
        vendors = os.listdir(os.path.join(package, "img"))
        for entry in emoji:
            if entry["category"] == "Component":
                continue
            code = entry["image"][:-len(".png")]
            digest = int(hashlib.sha256(code.encode()).hexdigest(), 16)
            split = "test" if digest % TEST_SHARE == 0 else "train"
            for vendor in vendors:
                source = os.path.join(package, "img", vendor, "64", entry["image"])
                if not entry.get(f"has_img_{vendor}") or not os.path.exists(source):
                    continue
                folder = os.path.join(out, split, slug(entry["category"]))
                os.makedirs(folder, exist_ok=True)
                width, height, rgba = read_png(source)
                write_rgb_png(os.path.join(folder, f"{code}-{vendor}.png"), width, height, on_white(rgba))
                written[split] = written.get(split, 0) + 1
                if sum(written.values()) % 500 == 0:
                    print(f"{sum(written.values())} images written", flush=True)
    print(f"wrote {written.get('train', 0)} training and {written.get('test', 0)} test images to {out}")


if __name__ == "__main__":
    main()
