//! Pictures: decode (JPEG, PNG, WebP), resize the shorter side, centre-crop, normalise to CHW floats.

use image::imageops::FilterType;

use super::manifest::ImageSection;

/// Why a picture could not be used (the item is embedded without it, and the reason is counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageProblem {
    Undecodable(String),
    TooLarge(u64),
}

/// A `[3, crop, crop]` tensor, channel-major, normalised as the manifest says.
pub fn preprocess(bytes: &[u8], cfg: &ImageSection) -> Result<Vec<f32>, ImageProblem> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageProblem::Undecodable(e.to_string()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ImageProblem::Undecodable(e.to_string()))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > cfg.max_pixels {
        return Err(ImageProblem::TooLarge(pixels));
    }
    let img = image::load_from_memory(bytes)
        .map_err(|e| ImageProblem::Undecodable(e.to_string()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(ImageProblem::Undecodable("empty picture".into()));
    }
    let s = cfg.resize_shorter;
    let scaled = |long: u32, short: u32| {
        ((f64::from(long) * f64::from(s) / f64::from(short)).round() as u32).max(s)
    };
    let (nw, nh) = if w <= h {
        (s, scaled(h, w))
    } else {
        (scaled(w, h), s)
    };
    // Triangle = bilinear, widened when shrinking (antialiased), like PIL's BILINEAR the reference uses.
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    let c = cfg.crop;
    let (left, top) = ((nw - c) / 2, (nh - c) / 2);
    let plane = (c * c) as usize;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..c {
        for x in 0..c {
            let p = resized.get_pixel(left + x, top + y).0;
            let i = (y * c + x) as usize;
            for ch in 0..3 {
                out[ch * plane + i] = (f32::from(p[ch]) - cfg.mean[ch]) / cfg.std[ch];
            }
        }
    }
    Ok(out)
}
