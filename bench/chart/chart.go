// Package chart draws a grouped bar chart as a 960×540 PNG, for the benchmark
// harness (`make bench`) to show latency percentiles side by side per mode:
// one group per percentile, one bar per mode in each group.
//
// From top to bottom the picture holds the title (bold), the note, a legend
// with one coloured square per series, then the plot: a value axis on the left
// from 0 to a round maximum (1, 2, 2.5 or 5 × 10^k) with five ticks and light
// grid lines, the unit above it, the groups evenly spaced along the bottom with
// their labels under them, and in each group one bar per series with its value
// printed above it, or "n/a" at its foot when the series has no value there.
//
// It uses only the standard library's image packages and the bitmap font
// golang.org/x/image/font/basicfont (Face7x13), so labels are printable ASCII;
// any other character is drawn as the font's replacement glyph.
package chart

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strconv"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Chart is a grouped bar chart: one group per label in Groups (e.g. "p50",
// "p90", "p99", "p99.9"), one bar per Series in each group, in the order given.
// The zero Chart is invalid (it has no groups and no series); see Validate.
type Chart struct {
	Title  string // drawn at the top; may be empty
	Unit   string // the value axis' unit, e.g. "ms", drawn above the axis; may be empty
	Groups []string
	Series []Series
	Note   string // optional line under the title, e.g. the machine and the date
}

// Series is one bar in every group of a Chart, all in the same colour.
type Series struct {
	Name string // legend label, e.g. "direct", "pillion", "haproxy"
	// Values holds one value per group, in the order of Chart.Groups. NaN or
	// a negative value (-Inf included) means "no value": no bar is drawn and
	// "n/a" is written in its place. +Inf is invalid.
	Values []float64
}

// Image size in pixels.
const (
	width  = 960
	height = 540
)

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

// Validate reports everything that keeps c from being drawn, one line per
// problem, each starting with "chart: ": no groups, an empty group label, no
// series, more series than distinct colours, an empty series name, a series
// whose number of values differs from the number of groups, a +Inf value.
// It returns nil if c can be rendered.
func (c Chart) Validate() error {
	var errs []error
	if len(c.Groups) == 0 {
		errs = append(errs, errors.New("chart: no groups"))
	}
	for i, g := range c.Groups {
		if g == "" {
			errs = append(errs, fmt.Errorf("chart: group %d has an empty label", i))
		}
	}
	if len(c.Series) == 0 {
		errs = append(errs, errors.New("chart: no series"))
	}
	if len(c.Series) > len(palette) {
		errs = append(errs, fmt.Errorf("chart: %d series, but only %d can have distinct colours", len(c.Series), len(palette)))
	}
	for i, s := range c.Series {
		name := strconv.Quote(s.Name)
		if s.Name == "" {
			name = strconv.Itoa(i)
			errs = append(errs, fmt.Errorf("chart: series %d has an empty name", i))
		}
		if len(s.Values) != len(c.Groups) {
			errs = append(errs, fmt.Errorf("chart: series %s has %d values for %d groups", name, len(s.Values), len(c.Groups)))
		}
		for j, v := range s.Values {
			if math.IsInf(v, 1) {
				errs = append(errs, fmt.Errorf("chart: series %s, group %s: value is +Inf", name, c.groupName(j)))
			}
		}
	}
	return errors.Join(errs...)
}

// groupName names group j in an error: its quoted label, or its index when
// the label is empty or missing.
func (c Chart) groupName(j int) string {
	if j < len(c.Groups) && c.Groups[j] != "" {
		return strconv.Quote(c.Groups[j])
	}
	return strconv.Itoa(j)
}

// Render validates c, draws it and writes it to w as a 960×540 PNG. It
// returns Validate's error, without writing anything, if c is invalid, and
// w's error, wrapped, if writing fails. It keeps neither c nor w and is safe
// for concurrent use.
func Render(w io.Writer, c Chart) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := png.Encode(w, paint(c, newLayout(c))); err != nil {
		return fmt.Errorf("chart: encode png: %w", err)
	}
	return nil
}

// hasValue reports whether v is drawn as a bar.
func hasValue(v float64) bool { return v >= 0 } // false for NaN

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

// layout is where everything goes. The renderer draws from it alone, and the
// tests check the picture against it.
type layout struct {
	axisMax   float64
	ticks     [5]float64      // values of the five ticks, from 0 to axisMax
	plot      image.Rectangle // bars grow up from plot.Max.Y; axisMax reaches plot.Min.Y
	titleBase int             // baseline of the title
	noteBase  int             // baseline of the note; 0 without a note
	legend    []image.Point   // per series: left edge of its swatch, baseline of its name
	slot      float64         // width of one group
	step      float64         // distance between neighbouring bars of a group
	barW      int             // width of every bar
	nSeries   int
}

func newLayout(c Chart) layout {
	l := layout{axisMax: niceMax(maxValue(c)), nSeries: len(c.Series)}
	for i := range l.ticks {
		l.ticks[i] = l.axisMax * float64(i) / float64(len(l.ticks)-1)
	}
	m := face.Metrics()
	ascent, descent, lineH := m.Ascent.Ceil(), m.Descent.Ceil(), m.Height.Ceil()

	y := margin + ascent
	l.titleBase = y
	if c.Note != "" {
		y += lineH + lineGap
		l.noteBase = y
	}
	y += descent + legendGap + ascent
	l.legend, y = legendLayout(c.Series, y, lineH+lineGap)
	top := y + descent + plotHead

	gutter := textWidth(c.Unit)
	for _, t := range l.ticks {
		gutter = max(gutter, textWidth(formatValue(t)))
	}
	left := margin + gutter + labelGap + tickLen
	bottom := height - margin - lineH - labelGap
	l.plot = image.Rect(left, top, width-margin, bottom)

	l.slot = float64(l.plot.Dx()) / float64(len(c.Groups))
	l.step = l.slot * groupShare / float64(len(c.Series))
	gap := max(1, math.Round(l.step/6))
	l.barW = max(1, int(l.step-gap))
	return l
}

// legendLayout places the legend entries left to right from baseline y,
// starting a new line when one would run past the right margin. It returns
// the entries' positions and the baseline of the last line.
func legendLayout(series []Series, y, lineStep int) ([]image.Point, int) {
	pos := make([]image.Point, len(series))
	x := margin
	for i, s := range series {
		w := swatch + swatch/2 + textWidth(s.Name)
		if x > margin && x+w > width-margin {
			x, y = margin, y+lineStep
		}
		pos[i] = image.Pt(x, y)
		x += w + legendPad
	}
	return pos, y
}

// maxValue is the largest value drawn as a bar, or 0 if there is none.
func maxValue(c Chart) float64 {
	m := 0.0
	for _, s := range c.Series {
		for _, v := range s.Values {
			if hasValue(v) && v > m {
				m = v
			}
		}
	}
	return m
}

// y returns the row a bar of value v reaches: plot.Max.Y for 0, plot.Min.Y
// for axisMax.
func (l layout) y(v float64) int {
	return l.plot.Max.Y - int(math.Round(v/l.axisMax*float64(l.plot.Dy())))
}

// bar returns the rectangle of series s's bar in group g for value v. With no
// value (see hasValue) it has the bar's columns and no height.
func (l layout) bar(g, s int, v float64) image.Rectangle {
	groupLeft := float64(l.plot.Min.X) + float64(g)*l.slot + l.slot*(1-groupShare)/2
	x0 := int(math.Round(groupLeft + float64(s)*l.step + (l.step-float64(l.barW))/2))
	top := l.plot.Max.Y
	if hasValue(v) {
		top = l.y(v)
	}
	return image.Rect(x0, top, x0+l.barW, l.plot.Max.Y)
}

// groupCentre returns the column at the middle of group g.
func (l layout) groupCentre(g int) int {
	return l.plot.Min.X + int(math.Round((float64(g)+0.5)*l.slot))
}

// paint draws c as laid out by l.
func paint(c Chart, l layout) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fill(img, img.Bounds(), background)

	drawText(img, c.Title, margin, l.titleBase, ink)
	drawText(img, c.Title, margin+1, l.titleBase, ink) // twice, one pixel apart: bold
	if c.Note != "" {
		drawText(img, c.Note, margin, l.noteBase, muted)
	}
	for i, s := range c.Series {
		p := l.legend[i]
		fill(img, image.Rect(p.X, p.Y-swatch+1, p.X+swatch, p.Y+1), palette[i])
		drawText(img, s.Name, p.X+swatch+swatch/2, p.Y, ink)
	}

	paintAxis(img, c.Unit, l)
	paintBars(img, c, l)
	for g, name := range c.Groups {
		centred(img, name, l.groupCentre(g), l.plot.Max.Y+labelGap+face.Metrics().Ascent.Ceil(), ink)
	}
	return img
}

// paintAxis draws the grid lines, the value axis with its ticks, their
// labels and the unit, and the baseline.
func paintAxis(img *image.RGBA, unit string, l layout) {
	p := l.plot
	labelRight := p.Min.X - tickLen - labelGap
	for _, t := range l.ticks {
		y := l.y(t)
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

// paintBars draws every bar, then every bar's value above it (or "n/a" at the
// bottom of its column), so that no bar hides a neighbour's label.
func paintBars(img *image.RGBA, c Chart, l layout) {
	for s, series := range c.Series {
		for g, v := range series.Values {
			fill(img, l.bar(g, s, v), palette[s])
		}
	}
	for s, series := range c.Series {
		for g, v := range series.Values {
			r := l.bar(g, s, v)
			mid := (r.Min.X + r.Max.X) / 2
			if hasValue(v) {
				centred(img, formatValue(v), mid, r.Min.Y-valueGap, ink)
			} else {
				centred(img, "n/a", mid, l.plot.Max.Y-valueGap, muted)
			}
		}
	}
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
