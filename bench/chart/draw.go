package chart

import (
	"image"
	"image/color"
	"image/draw"
	"math"
	"strconv"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// What the bar chart (Chart) and the line chart (Lines) share: colours, the
// font, spacing, the head (title, note, legend), the value axis, numbers.

// palette holds the series' colours in order: a neutral grey for the first
// series (the baseline, such as "direct"), then strong colours that are told
// apart easily. Validate refuses more series than colours rather than reuse one.
var palette = [...]color.RGBA{
	{0x8c, 0x8c, 0x8c, 0xff}, // grey
	{0x1f, 0x5f, 0xbf, 0xff}, // strong blue
	{0xe0, 0x7b, 0x10, 0xff}, // orange
	{0x2c, 0xa0, 0x2c, 0xff}, // green
	{0x94, 0x47, 0xbd, 0xff}, // purple
	{0xd6, 0x27, 0x28, 0xff}, // red
	{0x8c, 0x56, 0x4b, 0xff}, // brown
	{0x17, 0xa8, 0xb8, 0xff}, // teal
}

// Colours of everything that is not a bar. None equals a palette colour, so
// a test can tell bars from the rest by colour alone.
var (
	background = color.RGBA{0xff, 0xff, 0xff, 0xff}
	ink        = color.RGBA{0x22, 0x22, 0x22, 0xff} // title, legend, values, group labels
	muted      = color.RGBA{0x66, 0x66, 0x66, 0xff} // note, tick labels, unit, "n/a"
	axisInk    = color.RGBA{0x44, 0x44, 0x44, 0xff}
	gridInk    = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
)

// face is the only font. It is read, never changed.
var face = basicfont.Face7x13

// Spacing in pixels.
const (
	margin     = 16 // around the whole image
	lineGap    = 3  // between two lines of text
	legendGap  = 10 // above the legend
	swatch     = 10 // side of a legend colour square
	legendPad  = 20 // between two legend entries
	plotHead   = 28 // above the plot: the value over a full-height bar, the unit
	tickLen    = 4
	labelGap   = 4    // between a tick or group label and the axis
	valueGap   = 4    // between a bar's top and the baseline of its value
	groupShare = 0.75 // of a group's width taken by its bars; the rest separates groups
)

// head is where the title, the note and the legend go, from the top down.
type head struct {
	titleBase int           // baseline of the title
	noteBase  int           // baseline of the note; 0 without a note
	legend    []image.Point // per series: left edge of its swatch, baseline of its name
	bottom    int           // the row under the legend's last line
}

func newHead(note string, names []string) head {
	m := face.Metrics()
	ascent, descent, lineH := m.Ascent.Ceil(), m.Descent.Ceil(), m.Height.Ceil()
	var h head
	y := margin + ascent
	h.titleBase = y
	if note != "" {
		y += lineH + lineGap
		h.noteBase = y
	}
	y += descent + legendGap + ascent
	h.legend, y = legendLayout(names, y, lineH+lineGap)
	h.bottom = y + descent
	return h
}

// paint draws the title (bold), the note and the legend: one swatch of the
// series' palette colour and its name per entry.
func (h head) paint(img *image.RGBA, title, note string, names []string) {
	drawText(img, title, margin, h.titleBase, ink)
	drawText(img, title, margin+1, h.titleBase, ink) // twice, one pixel apart: bold
	if note != "" {
		drawText(img, note, margin, h.noteBase, muted)
	}
	for i, name := range names {
		p := h.legend[i]
		fill(img, image.Rect(p.X, p.Y-swatch+1, p.X+swatch, p.Y+1), palette[i])
		drawText(img, name, p.X+swatch+swatch/2, p.Y, ink)
	}
}

// legendLayout places the legend entries left to right from baseline y,
// starting a new line when one would run past the right margin. It returns
// the entries' positions and the baseline of the last line.
func legendLayout(names []string, y, lineStep int) ([]image.Point, int) {
	pos := make([]image.Point, len(names))
	x := margin
	for i, name := range names {
		w := swatch + swatch/2 + textWidth(name)
		if x > margin && x+w > width-margin {
			x, y = margin, y+lineStep
		}
		pos[i] = image.Pt(x, y)
		x += w + legendPad
	}
	return pos, y
}

// valueAxis is a vertical axis from 0 at plot.Max.Y to axisMax at plot.Min.Y,
// with five ticks.
type valueAxis struct {
	axisMax float64
	ticks   [5]float64      // values of the five ticks, from 0 to axisMax
	plot    image.Rectangle // 0 is at plot.Max.Y; axisMax reaches plot.Min.Y
}

// newValueAxis is an axis for values up to top (its plot is set later).
func newValueAxis(top float64) valueAxis {
	a := valueAxis{axisMax: niceMax(top)}
	for i := range a.ticks {
		a.ticks[i] = a.axisMax * float64(i) / float64(len(a.ticks)-1)
	}
	return a
}

// gutter is the width the tick labels and unit need left of the plot,
// ticks included.
func (a valueAxis) gutter(unit string) int {
	w := textWidth(unit)
	for _, t := range a.ticks {
		w = max(w, textWidth(formatValue(t)))
	}
	return w + labelGap + tickLen
}

// y returns the row of value v: plot.Max.Y for 0, plot.Min.Y for axisMax.
func (a valueAxis) y(v float64) int {
	return a.plot.Max.Y - int(math.Round(v/a.axisMax*float64(a.plot.Dy())))
}

// paint draws the grid lines, the axis with its ticks, their labels and
// the unit (above the axis), and the baseline.
func (a valueAxis) paint(img *image.RGBA, unit string) {
	p := a.plot
	labelRight := p.Min.X - tickLen - labelGap
	for _, t := range a.ticks {
		y := a.y(t)
		fill(img, image.Rect(p.Min.X, y, p.Max.X, y+1), gridInk)
		fill(img, image.Rect(p.Min.X-1-tickLen, y, p.Min.X-1, y+1), axisInk)
		label := formatValue(t)
		// A digit spans rows baseline-9 to baseline: centre it on the tick.
		drawText(img, label, labelRight-textWidth(label), y+4, muted)
	}
	if unit != "" {
		drawText(img, unit, labelRight-textWidth(unit), p.Min.Y-12, muted)
	}
	fill(img, image.Rect(p.Min.X-1, p.Min.Y, p.Min.X, p.Max.Y+1), axisInk)
	fill(img, image.Rect(p.Min.X-1, p.Max.Y, p.Max.X, p.Max.Y+1), axisInk)
}

// niceMax returns the top of a value axis for values up to v: the smallest
// 1, 2, 2.5 or 5 × 10^k that is at least v, or 1 when v is not positive.
func niceMax(v float64) float64 {
	if !(v > 0) {
		return 1
	}
	base := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*base >= v {
			return m * base
		}
	}
	return 10 * base
}

// formatValue writes v compactly: at most four significant digits, no
// trailing zeros (0.25, 1.875, 12.35, 250, 1235), and exponent notation only
// for very small or very large values.
func formatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a < 1e-3 || a >= 1e6:
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	digits := max(0, 3-int(math.Floor(math.Log10(a))))
	s := strconv.FormatFloat(v, 'f', digits, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// textWidth is the width of s in pixels.
func textWidth(s string) int { return font.MeasureString(face, s).Ceil() }

// drawText draws s starting at column x on the given baseline.
func drawText(img *image.RGBA, s string, x, baseline int, c color.RGBA) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: face, Dot: fixed.P(x, baseline)}
	d.DrawString(s)
}

// centred draws s centred on column x.
func centred(img *image.RGBA, s string, x, baseline int, c color.RGBA) {
	drawText(img, s, x-textWidth(s)/2, baseline, c)
}
