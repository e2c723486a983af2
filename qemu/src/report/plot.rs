//! The time-to-identity histogram as an RGB PNG, drawn pixel by pixel with a built-in 5x7
//! font. It must never need system fonts or a display, and never panic: every pixel write
//! is bounds-checked and empty or degenerate inputs draw an empty chart.

use std::io::Write;

use super::Summary;

const W: usize = 960;
const H: usize = 540;
const LEFT: usize = 90;
const RIGHT: usize = 30;
const TOP: usize = 60;
const BOTTOM: usize = 70;

type Rgb = [u8; 3];
const BLACK: Rgb = [20, 20, 20];
const GRID: Rgb = [225, 225, 225];
const BAR: Rgb = [66, 110, 180];
const P50: Rgb = [30, 150, 60];
const P95: Rgb = [230, 140, 0];
const P99: Rgb = [200, 30, 30];

/// An RGB image in memory.
pub(super) struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: usize, y: usize, c: Rgb) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            if let Some(p) = self.px.get_mut(i..i + 3) {
                p.copy_from_slice(&c);
            }
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: Rgb) {
        for y in y0..y1.min(self.h) {
            for x in x0..x1.min(self.w) {
                self.set(x, y, c);
            }
        }
    }

    /// Text with its top-left corner at (x, y), glyphs 5x7 scaled by `s`, 1 column gap.
    fn text(&mut self, x: usize, y: usize, s: usize, c: Rgb, text: &str) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i * 6 * s;
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if bits & (0b10000 >> rx) != 0 {
                        self.rect(
                            gx + rx * s,
                            y + ry * s,
                            gx + (rx + 1) * s,
                            y + (ry + 1) * s,
                            c,
                        );
                    }
                }
            }
        }
    }

    fn text_width(s: usize, text: &str) -> usize {
        text.chars().count() * 6 * s
    }

    /// Encodes the canvas as an 8-bit RGB PNG.
    pub(super) fn encode(&self, out: impl Write) -> std::io::Result<()> {
        let w = u32::try_from(self.w).map_err(std::io::Error::other)?;
        let h = u32::try_from(self.h).map_err(std::io::Error::other)?;
        let mut enc = png::Encoder::new(out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&self.px)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks on `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let f = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    f * mag
}

fn label(v: f64, seconds: bool) -> String {
    let v = if seconds { v / 1000.0 } else { v };
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Draws the histogram of `summary.time_to_identity`.
pub(super) fn histogram(summary: &Summary) -> Canvas {
    let mut c = Canvas::new(W, H);
    let samples: Vec<f64> = summary
        .time_to_identity
        .iter()
        .map(|d| super::ms(*d))
        .collect();
    let max = samples.iter().copied().fold(0.0f64, f64::max);
    let seconds = max >= 2000.0;
    let unit = if seconds { "s" } else { "ms" };
    let step = nice_step(max.max(1.0), 6.0);
    let hi = ((max / step).floor() + 1.0) * step;
    let bins = (samples.len() as f64).sqrt().ceil().clamp(10.0, 50.0) as usize;
    let mut counts = vec![0usize; bins];
    for v in &samples {
        let b = ((v / hi) * bins as f64).floor();
        let b = if b.is_finite() && b >= 0.0 {
            (b as usize).min(bins - 1)
        } else {
            0
        };
        if let Some(n) = counts.get_mut(b) {
            *n += 1;
        }
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let ystep = nice_step(top as f64, 5.0).max(1.0);
    let ytop = ((top as f64 / ystep).ceil() * ystep).max(1.0);

    let (px0, py0, pw, ph) = (LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM);
    let ypix = |v: f64| py0 + ph - ((v / ytop) * ph as f64).round().clamp(0.0, ph as f64) as usize;
    let xpix = |v: f64| px0 + ((v / hi) * pw as f64).round().clamp(0.0, pw as f64) as usize;

    // Grid and y labels.
    let mut y = 0.0;
    while y <= ytop + 1e-9 {
        let py = ypix(y);
        c.rect(px0, py, px0 + pw, py + 1, GRID);
        let l = label(y, false);
        c.text(
            px0.saturating_sub(Canvas::text_width(2, &l) + 8),
            py.saturating_sub(7),
            2,
            BLACK,
            &l,
        );
        y += ystep;
    }
    // Bars.
    for (i, n) in counts.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let x0 = xpix(hi * i as f64 / bins as f64) + 1;
        let x1 = xpix(hi * (i + 1) as f64 / bins as f64);
        c.rect(x0, ypix(*n as f64), x1.max(x0 + 1), py0 + ph, BAR);
    }
    // Axes and x labels.
    c.rect(px0, py0, px0 + 2, py0 + ph + 1, BLACK);
    c.rect(px0, py0 + ph, px0 + pw, py0 + ph + 2, BLACK);
    let mut x = 0.0;
    while x <= hi + 1e-9 {
        let px = xpix(x);
        c.rect(px, py0 + ph, px + 1, py0 + ph + 6, BLACK);
        let l = label(x, seconds);
        c.text(
            px.saturating_sub(Canvas::text_width(2, &l) / 2),
            py0 + ph + 12,
            2,
            BLACK,
            &l,
        );
        x += step;
    }
    let xl = format!("time to identity ({unit})");
    c.text(
        px0 + pw / 2 - Canvas::text_width(2, &xl) / 2,
        H - 26,
        2,
        BLACK,
        &xl,
    );
    c.text(8, TOP - 22, 2, BLACK, "devices");

    // Percentile markers with a legend.
    let mut legend_x = px0 + pw;
    for (name, p, color) in [("p99", 99.0, P99), ("p95", 95.0, P95), ("p50", 50.0, P50)] {
        if let Some(d) = summary.percentile(p) {
            let v = super::ms(d);
            let px = xpix(v);
            c.rect(px, py0, px + 2, py0 + ph, color);
            let l = format!(
                "{name} {} {unit}",
                label((v * 10.0).round() / 10.0, seconds)
            );
            legend_x = legend_x.saturating_sub(Canvas::text_width(2, &l) + 24);
            c.text(legend_x, TOP - 22, 2, color, &l);
        }
    }
    let title = if samples.is_empty() {
        format!("{} - no attested devices", summary.mode)
    } else {
        format!(
            "{} - {}/{} attested",
            summary.mode, summary.attested, summary.devices
        )
    };
    c.text(8, 12, 2, BLACK, &title);
    c
}

/// The 5x7 glyph of `ch` (rows top to bottom, bit 4 = left column); lowercase letters use
/// the uppercase shapes and unknown characters a question mark.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 6.0), 2.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nice_step(f64::NAN, 5.0), 1.0);
    }

    #[test]
    fn bars_are_drawn() {
        let s = Summary {
            time_to_identity: vec![std::time::Duration::from_millis(100); 5],
            ..Summary::default()
        };
        let c = histogram(&s);
        let bar_pixels = c.px.chunks(3).filter(|p| *p == BAR).count();
        assert!(bar_pixels > 100, "no bar drawn ({bar_pixels} pixels)");
        let empty = histogram(&Summary::default());
        assert_eq!(empty.px.chunks(3).filter(|p| *p == BAR).count(), 0);
    }
}
