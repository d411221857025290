// Package chart draws two kinds of PNG chart: a grouped bar chart (Chart,
// 960×540), for the benchmark harness (`make bench`) to show latency
// percentiles side by side per mode — one group per percentile, one bar per
// mode in each group; and a line chart (Lines, 960×720), for `make soak` to
// show each sidecar's memory, goroutines and descriptors over time — one
// panel per quantity, one line per sidecar. Both share the head, the colours
// and the value axis.
//
// From top to bottom the bar chart holds the title (bold), the note, a legend
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
	"image/png"
	"io"
	"math"
	"strconv"
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

// layout is where everything goes. The renderer draws from it alone, and the
// tests check the picture against it.
type layout struct {
	head
	valueAxis         // bars grow up from plot.Max.Y
	slot      float64 // width of one group
	step      float64 // distance between neighbouring bars of a group
	barW      int     // width of every bar
	nSeries   int
}

func newLayout(c Chart) layout {
	l := layout{head: newHead(c.Note, c.names()), valueAxis: newValueAxis(maxValue(c)), nSeries: len(c.Series)}
	lineH := face.Metrics().Height.Ceil()
	top := l.bottom + plotHead
	left := margin + l.gutter(c.Unit)
	bottom := height - margin - lineH - labelGap
	l.plot = image.Rect(left, top, width-margin, bottom)

	l.slot = float64(l.plot.Dx()) / float64(len(c.Groups))
	l.step = l.slot * groupShare / float64(len(c.Series))
	gap := max(1, math.Round(l.step/6))
	l.barW = max(1, int(l.step-gap))
	return l
}

// names are the series' names, in order.
func (c Chart) names() []string {
	out := make([]string, len(c.Series))
	for i, s := range c.Series {
		out[i] = s.Name
	}
	return out
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

	l.head.paint(img, c.Title, c.Note, c.names())
	l.valueAxis.paint(img, c.Unit)
	paintBars(img, c, l)
	for g, name := range c.Groups {
		centred(img, name, l.groupCentre(g), l.plot.Max.Y+labelGap+face.Metrics().Ascent.Ceil(), ink)
	}
	return img
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
