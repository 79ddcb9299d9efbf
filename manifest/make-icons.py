#!/usr/bin/env python3
"""Usage: python3 manifest/make-icons.py  (writes manifest/color.png and manifest/outline.png)

Draws the Teams app icons with the standard library only: a white chat bubble holding a check
mark on the accent colour (192x192), and the same bubble as a white outline on transparency
(32x32). Anti-aliased by 4x4 supersampling.
"""
import math
import os
import struct
import zlib

ACCENT = (0x0F, 0x6C, 0xBD)  # keep equal to accentColor in manifest.json
HERE = os.path.dirname(os.path.abspath(__file__))


def seg_dist(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def sd_round_rect(px, py, x0, y0, x1, y1, r):
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = (x1 - x0) / 2 - r, (y1 - y0) / 2 - r
    qx, qy = abs(px - cx) - hx, abs(py - cy) - hy
    outside = math.hypot(max(qx, 0), max(qy, 0))
    return outside + min(max(qx, qy), 0) - r


def sd_triangle(px, py, pts):
    d = min(seg_dist(px, py, *pts[i], *pts[(i + 1) % 3]) for i in range(3))
    signs = []
    for i in range(3):
        (ax, ay), (bx, by) = pts[i], pts[(i + 1) % 3]
        signs.append((bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0)
    inside = all(signs) or not any(signs)
    return -d if inside else d


def shapes(size):
    """Shapes in a 0..1 unit square scaled to `size`."""
    s = size
    rect = (0.20 * s, 0.22 * s, 0.80 * s, 0.66 * s, 0.10 * s)
    tail = [(0.30 * s, 0.60 * s), (0.48 * s, 0.60 * s), (0.27 * s, 0.80 * s)]
    check = [(0.36 * s, 0.445 * s), (0.46 * s, 0.54 * s), (0.64 * s, 0.35 * s)]
    return rect, tail, check


def bubble_sd(px, py, size):
    rect, tail, _ = shapes(size)
    return min(sd_round_rect(px, py, *rect), sd_triangle(px, py, tail))


def check_dist(px, py, size):
    _, _, c = shapes(size)
    return min(seg_dist(px, py, *c[0], *c[1]), seg_dist(px, py, *c[1], *c[2]))


def render(size, pixel):
    rows = []
    n = 4
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            acc = [0.0, 0.0, 0.0, 0.0]
            for sy in range(n):
                for sx in range(n):
                    r, g, b, a = pixel(x + (sx + 0.5) / n, y + (sy + 0.5) / n, size)
                    acc[0] += r * a
                    acc[1] += g * a
                    acc[2] += b * a
                    acc[3] += a
            a = acc[3] / (n * n)
            if a > 0:
                row += bytes(round(acc[i] / acc[3]) for i in range(3))
            else:
                row += b"\0\0\0"
            row.append(round(a * 255))
        rows.append(bytes(row))
    return b"".join(rows)


def color_pixel(px, py, size):
    white = (255, 255, 255, 1.0)
    bg = (*ACCENT, 1.0)
    if check_dist(px, py, size) <= 0.045 * size:
        return bg
    if bubble_sd(px, py, size) <= 0:
        return white
    return bg


def outline_pixel(px, py, size):
    stroke = 2.0
    d = bubble_sd(px, py, size)
    if -stroke <= d <= 0 or check_dist(px, py, size) <= 1.1:
        return (255, 255, 255, 1.0)
    return (255, 255, 255, 0.0)


def png(size, raw):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    for name, size, pixel in (("color.png", 192, color_pixel), ("outline.png", 32, outline_pixel)):
        path = os.path.join(HERE, name)
        with open(path, "wb") as f:
            f.write(png(size, render(size, pixel)))
        print(path)


if __name__ == "__main__":
    main()
