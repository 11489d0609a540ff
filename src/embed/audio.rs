//! Audio: WAV decoding, resampling and the log-mel blocks the audio network reads, all in Rust.
//!
//! The steps follow the manifest and `models/sail-lite/build.py` (the parity reference): mono mix, linear
//! resampling to `sample_rate`, cut at `max_seconds`, peak normalisation, zero-padded centred STFT with a periodic
//! Hann window, power spectrum, HTK mel filterbank (each filter scaled to unit area), then
//! `log10(1 + log_scale * mel) / log_divisor`, cut into blocks of `block_frames` frames `block_hop` apart.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use super::manifest::AudioSection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioProblem {
    Undecodable(String),
    Empty,
}

pub struct AudioPreprocessor {
    cfg: AudioSection,
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    /// `n_mels` rows of `(first bin, weights)`: the filters are sparse.
    filters: Vec<(usize, Vec<f64>)>,
}

impl AudioPreprocessor {
    pub fn new(cfg: &AudioSection) -> AudioPreprocessor {
        let n = cfg.n_fft;
        let window = (0..n)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
            .collect();
        AudioPreprocessor {
            cfg: cfg.clone(),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(n),
            window,
            filters: mel_filters(cfg),
        }
    }

    /// Blocks of `[block_frames, n_mels]` features, row-major, at most `max_blocks` of them.
    pub fn blocks(&self, wav: &[u8]) -> Result<Vec<Vec<f32>>, AudioProblem> {
        let (mono, rate) = decode_wav(wav).map_err(AudioProblem::Undecodable)?;
        let c = &self.cfg;
        let mut x = resample_linear(&mono, rate, c.sample_rate);
        x.truncate((c.max_seconds * f64::from(c.sample_rate)) as usize);
        if x.is_empty() {
            return Err(AudioProblem::Empty);
        }
        let peak = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        if peak > 0.0 {
            x.iter_mut().for_each(|v| *v /= peak);
        }
        let (n_fft, hop) = (c.n_fft, c.hop);
        let mut padded = vec![0f64; n_fft / 2];
        padded.extend_from_slice(&x);
        padded.extend(std::iter::repeat_n(0.0, n_fft / 2));
        let n_frames = if padded.len() >= n_fft {
            1 + (padded.len() - n_fft) / hop
        } else {
            0
        };
        // Only the frames that can end up in a block are computed.
        let needed = (c.block_frames + c.block_hop * c.max_blocks.saturating_sub(1)).min(n_frames);
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut features = Vec::with_capacity(needed * c.n_mels);
        for f in 0..needed {
            let start = f * hop;
            for (i, v) in frame.iter_mut().enumerate() {
                *v = padded[start + i] * self.window[i];
            }
            self.fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .map_err(|e| AudioProblem::Undecodable(format!("fft: {e}")))?;
            for (first, weights) in &self.filters {
                let mel: f64 = weights
                    .iter()
                    .zip(&spectrum[*first..])
                    .map(|(w, s)| w * s.norm_sqr())
                    .sum();
                features.push(((1.0 + c.log_scale * mel).log10() / c.log_divisor) as f32);
            }
        }
        let (bf, bh, n_mels) = (c.block_frames, c.block_hop, c.n_mels);
        let frames = features.len() / n_mels;
        if frames < bf {
            features.resize(bf * n_mels, 0.0);
            return Ok(vec![features]);
        }
        Ok((0..=(frames - bf) / bh)
            .take(c.max_blocks)
            .map(|b| features[b * bh * n_mels..(b * bh + bf) * n_mels].to_vec())
            .collect())
    }
}

/// HTK-scale triangular filters over the rfft bins, each normalised to unit sum.
fn mel_filters(c: &AudioSection) -> Vec<(usize, Vec<f64>)> {
    let to_mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
    let from_mel = |m: f64| 700.0 * (10f64.powf(m / 2595.0) - 1.0);
    let bins = c.n_fft / 2 + 1;
    let freqs: Vec<f64> = (0..bins)
        .map(|k| k as f64 * f64::from(c.sample_rate) / c.n_fft as f64)
        .collect();
    let (lo, hi) = (to_mel(c.f_min), to_mel(c.f_max));
    let points: Vec<f64> = (0..c.n_mels + 2)
        .map(|i| from_mel(lo + (hi - lo) * i as f64 / (c.n_mels + 1) as f64))
        .collect();
    (0..c.n_mels)
        .map(|m| {
            let (left, centre, right) = (points[m], points[m + 1], points[m + 2]);
            let w: Vec<f64> = freqs
                .iter()
                .map(|&f| {
                    let up = (f - left) / (centre - left);
                    let down = (right - f) / (right - centre);
                    up.min(down).max(0.0)
                })
                .collect();
            let sum: f64 = w.iter().sum();
            let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
            let last = w.iter().rposition(|&v| v > 0.0).unwrap_or(0);
            let scale = if sum > 0.0 { 1.0 / sum } else { 1.0 };
            (first, w[first..=last].iter().map(|v| v * scale).collect())
        })
        .collect()
}

/// `np.interp`-style linear resampling: output sample i sits at input position `i * from / to`.
fn resample_linear(x: &[f64], from: u32, to: u32) -> Vec<f64> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let n_out = (x.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    let last = x.len() - 1;
    (0..n_out)
        .map(|i| {
            let t = i as f64 * step;
            let j = t.floor() as usize;
            if j >= last {
                x[last]
            } else {
                x[j] + (t - j as f64) * (x[j + 1] - x[j])
            }
        })
        .collect()
}

/// Mono samples in [-1, 1] and the sample rate of a RIFF/WAVE file: PCM 8/16/24/32-bit or IEEE float 32/64.
pub fn decode_wav(data: &[u8]) -> Result<(Vec<f64>, u32), String> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let (mut pos, mut fmt, mut pcm) = (12usize, None, None);
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let size = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let body = &data[pos + 8..(pos + 8).saturating_add(size).min(data.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
                fmt = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => pcm = Some(body),
            _ => {}
        }
        pos = pos
            .saturating_add(8)
            .saturating_add(size)
            .saturating_add(size & 1);
    }
    let (Some((tag, channels, rate, bits)), Some(pcm)) = (fmt, pcm) else {
        return Err("missing fmt or data chunk".into());
    };
    if channels == 0 || rate == 0 {
        return Err(format!("{channels} channels at {rate} Hz"));
    }
    // WAVE_FORMAT_EXTENSIBLE carries the real tag in its sub-format; the common cases are PCM and float.
    let samples: Vec<f64> = match (tag, bits) {
        (1 | 0xFFFE, 8) => pcm
            .iter()
            .map(|&b| (f64::from(b) - 128.0) / 128.0)
            .collect(),
        (1 | 0xFFFE, 16) => pcm
            .chunks_exact(2)
            .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect(),
        (1 | 0xFFFE, 24) => pcm
            .chunks_exact(3)
            .map(|c| f64::from(i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8) / 8_388_608.0)
            .collect(),
        (1 | 0xFFFE, 32) => pcm
            .chunks_exact(4)
            .map(|c| {
                f64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))) / 2_147_483_648.0
            })
            .collect(),
        (3, 32) => pcm
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        (3, 64) => pcm
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        _ => return Err(format!("unsupported WAV format tag {tag} with {bits} bits")),
    };
    let ch = usize::from(channels);
    let mono = samples
        .chunks_exact(ch)
        .map(|frame| frame.iter().sum::<f64>() / ch as f64)
        .collect();
    Ok((mono, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav16(rate: u32, samples: &[i16]) -> Vec<u8> {
        let mut pcm = Vec::new();
        samples
            .iter()
            .for_each(|s| pcm.extend_from_slice(&s.to_le_bytes()));
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        for v in [1u16, 1] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        for v in [2u16, 16] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
        out.extend_from_slice(&pcm);
        out
    }

    #[test]
    fn wav_decoding_and_resampling() {
        let (x, rate) = decode_wav(&wav16(8000, &[0, 16384, -32768])).unwrap();
        assert_eq!(rate, 8000);
        assert_eq!(x, vec![0.0, 0.5, -1.0]);
        assert_eq!(resample_linear(&[0.0, 1.0], 1, 2), vec![0.0, 0.5, 1.0, 1.0]);
        assert!(decode_wav(b"RIFF\x04\x00\x00\x00WAVE").is_err());
        assert!(decode_wav(&[0u8; 3]).is_err());
    }

    #[test]
    fn mel_filters_have_unit_area() {
        let cfg: crate::embed::manifest::AudioSection = toml::from_str(
            "blocks='b'\nweights='w'\nsample_rate=16000\nn_fft=512\nhop=256\nn_mels=20\nf_min=0.0\nf_max=8000.0\n\
             log_scale=1.0\nlog_divisor=1.0\nblock_frames=4\nblock_hop=2\nmax_blocks=3\nmax_bytes=1000\nmax_seconds=1.0",
        )
        .unwrap();
        for (_, w) in mel_filters(&cfg) {
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let pre = AudioPreprocessor::new(&cfg);
        let tone: Vec<i16> = (0..16000)
            .map(|i| ((i as f64 * 0.3).sin() * 10000.0) as i16)
            .collect();
        let blocks = pre.blocks(&wav16(16000, &tone)).unwrap();
        assert_eq!(blocks.len(), 3);
        assert!(
            blocks
                .iter()
                .all(|b| b.len() == 4 * 20 && b.iter().all(|v| v.is_finite()))
        );
    }
}
