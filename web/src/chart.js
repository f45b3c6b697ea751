// A tiny rolling line chart on a <canvas>: the last few minutes of one metric.
// No dependency, no layout work beyond one canvas redraw per new sample.

const SAMPLES = 300; // 5 minutes at one sample per second

export class Chart {
  constructor(canvas, color, fixedMax = null) {
    this.canvas = canvas;
    this.color = color;
    this.fixedMax = fixedMax;
    this.values = [];
  }

  push(value) {
    if (typeof value !== 'number' || !Number.isFinite(value)) return;
    this.values.push(value);
    if (this.values.length > SAMPLES) this.values.shift();
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, width, height);
    const max = this.fixedMax ?? Math.max(1, ...this.values) * 1.15;
    const step = width / (SAMPLES - 1);
    const x0 = width - (this.values.length - 1) * step;
    ctx.beginPath();
    this.values.forEach((v, i) => {
      const x = x0 + i * step;
      const y = height - (Math.min(v, max) / max) * (height - 2) - 1;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = this.color;
    ctx.lineWidth = 1.5 * ratio;
    ctx.stroke();
  }
}
