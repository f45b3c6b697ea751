// Reads peercam's latency stamp (docs/latency-stamp.md) from the video or a snapshot: 48 cells
// of C px (16 when the frame is >= 720 rows, else 8) in the top row, white = 1, black = 0,
// most significant bit first, holding the capture time in Unix milliseconds.

const BITS = 48;

/** Returns the stamped capture time (ms), or null when the frame carries no stamp.
 *  `source` is the video element, or any picture with a width and height (a snapshot). */
export function readStamp(source, canvas, context) {
  const width = source.videoWidth ?? source.width;
  const height = source.videoHeight ?? source.height;
  const cell = height >= 720 ? 16 : 8;
  if (width < BITS * cell || height < cell) return null;
  canvas.width = BITS * cell;
  canvas.height = cell;
  context.drawImage(source, 0, 0, BITS * cell, cell, 0, 0, BITS * cell, cell);
  const pixels = context.getImageData(0, 0, BITS * cell, cell).data;
  let value = 0;
  const centre = cell >> 1;
  for (let bit = 0; bit < BITS; bit += 1) {
    const i = (centre * BITS * cell + bit * cell + centre) * 4;
    const luma = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
    // 48 bits exceed 32-bit integer ops: accumulate with arithmetic, not shifts.
    value = value * 2 + (luma >= 128 ? 1 : 0);
  }
  return value;
}
