"""The evaluation transform without TensorFlow, for inference (``lgvit.inference``, ``lgvit.introspection``).

Training and evaluation read TFDS through tf.data (``lgvit.data.pipeline``); a user who classifies a
few images should not need TensorFlow for that. This module decodes and crops one image the way
``pipeline.eval_dataset`` does:

* JPEG through libjpeg-turbo with the fast integer DCT and fancy chroma upsampling (``simplejpeg``),
  which is what ``tf.io.decode_image`` does by default, so the decoded pixels are the same; other
  formats (PNG, GIF, BMP) through Pillow, first frame, as RGB.
* Resize the shorter side to ``floor(image_size / crop_pct)`` with an antialiased bilinear or bicubic
  kernel, then centre-crop ``image_size`` (timm's eval transform). ``jax.image.resize`` implements
  the same scale-and-translate kernels as ``tf.image.resize(antialias=True)``, in float32 too, but
  sums in another order: after rounding to uint8 a few values in 10^4 come out one level apart
  (tests/test_predict.py measures it).
"""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

#: ImageNet channel statistics on the 0..255 scale, the only definition in lgvit.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_JPEG_MAGIC = b'\xff\xd8\xff'


class UndecodableImageError(ValueError):
  pass


#: Images with more pixels are refused before they are decoded (Pillow's own bomb limit): a
#: 20000x20000 photo would take 1.2 GB decoded, for a crop of a few hundred pixels.
MAX_PIXELS = 89_478_485


def _check_size(width: int, height: int):
  if width * height > MAX_PIXELS:
    raise UndecodableImageError(f'{width}x{height} pixels is more than the {MAX_PIXELS:,} this reader decodes; '
                                'downscale the image first')


def decode(data: bytes) -> np.ndarray:
  """Encoded JPEG/PNG/GIF/BMP bytes -> (H, W, 3) uint8, the pixels ``tf.io.decode_image`` returns.

  Alpha is dropped and 16-bit samples keep their high byte, as TensorFlow's uint8 decoding does.
  """
  if not data:
    raise UndecodableImageError('the file is empty')
  if data[:3] == _JPEG_MAGIC:
    try:
      _check_size(*simplejpeg.decode_jpeg_header(data)[1::-1])
      return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=True, fastupsample=False)
    except ValueError as e:
      raise UndecodableImageError(str(e).splitlines()[0]) from None
  try:
    with Image.open(io.BytesIO(data)) as image:
      _check_size(*image.size)
      if image.mode.startswith('I;16') or image.mode == 'I':
        wide = np.asarray(image).astype(np.uint32)
        return np.repeat(((wide >> 8) & 0xFF).astype(np.uint8)[:, :, None], 3, axis=-1)
      return np.asarray(image.convert('RGB'))
  except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
    raise UndecodableImageError(str(e).splitlines()[0]) from None


def as_rgb(array) -> np.ndarray:
  """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array -> (H, W, 3) (grey repeated, alpha dropped)."""
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {array.shape}')
  if array.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image (0..255), got {array.dtype}')
  return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]


def resized_shape(h: int, w: int, image_size: int, crop_pct: float) -> tuple[int, int]:
  """The size before the centre crop, computed in float32 with round-half-even as the TF graph does."""
  short = np.floor(np.float32(image_size) / np.float32(crop_pct))
  scale = np.float32(short) / np.float32(min(h, w))
  return (max(int(np.round(np.float32(h) * scale)), image_size), max(int(np.round(np.float32(w) * scale)), image_size))


def center_crop(image: np.ndarray, image_size: int, crop_pct: float, interpolation: str) -> np.ndarray:
  """Resize the shorter side to image_size / crop_pct, centre-crop image_size; uint8 in and out."""
  methods = {'bilinear': 'linear', 'bicubic': 'cubic'}
  if interpolation not in methods:
    raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
  new_h, new_w = resized_shape(image.shape[0], image.shape[1], image_size, crop_pct)
  resized = jax.image.resize(jnp.asarray(image, jnp.float32), (new_h, new_w, 3), methods[interpolation],
                             antialias=True)
  top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
  crop = resized[top:top + image_size, left:left + image_size]
  return np.asarray(jnp.clip(jnp.round(crop), 0, 255).astype(jnp.uint8))


def eval_image(image, image_size: int, crop_pct: float, interpolation: str) -> np.ndarray:
  """Encoded bytes or a uint8 (H, W[, C]) array -> the (image_size, image_size, 3) uint8 eval crop."""
  decoded = decode(bytes(image)) if isinstance(image, (bytes, bytearray)) else as_rgb(image)
  return center_crop(decoded, image_size, crop_pct, interpolation)
