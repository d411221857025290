package chart

import (
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
)

// Lines is a line chart of series over one horizontal axis (such as seconds
// since a run started; it starts at 0, or further left for negative X), drawn in panels stacked top to bottom that share
// that axis, each with its own value axis from 0: one line per series in
// every panel, in the series' colour, which the legend names once. The zero
// Lines is invalid (no series, no panels); see Validate.
type Lines struct {
	Title  string   // drawn at the top; may be empty
	Note   string   // optional line under the title
	XUnit  string   // appended to the horizontal axis' tick labels, e.g. "s"; may be empty
	Series []string // the series' names, for the legend
	Panels []Panel
	Marks  []Mark // vertical lines across every panel, e.g. where a warm-up ends
}

// Panel is one plot of a Lines chart.
type Panel struct {
	Unit string // drawn above the value axis, e.g. "RSS MiB"; may be empty
	// Lines holds one line per series, in the order of Lines.Series, each
	// drawn through its points in order. A line may be empty (nothing is
	// drawn) or a single point (a dot).
	Lines [][]Point
}

// Point is one point of a line. Both coordinates must be finite and Y not
// negative: the value axes start at 0.
type Point struct{ X, Y float64 }

// Mark is a dotted vertical line at X across every panel, with its label at
// the top of the first.
type Mark struct {
	X     float64
	Label string
}

// linesHeight is a Lines chart's height in pixels; it is as wide as a Chart.
const linesHeight = 720

// Validate reports everything that keeps l from being drawn, one line per
// problem, each starting with "chart: ": no series, more series than
// distinct colours, an empty series name, no panels, a panel whose number of
// lines differs from the number of series, a point or mark that is not
// finite, a negative value. It returns nil if l can be rendered.
func (l Lines) Validate() error {
	var errs []error
	if len(l.Series) == 0 {
		errs = append(errs, errors.New("chart: no series"))
	}
	if len(l.Series) > len(palette) {
		errs = append(errs, fmt.Errorf("chart: %d series, but only %d can have distinct colours", len(l.Series), len(palette)))
	}
	for i, name := range l.Series {
		if name == "" {
			errs = append(errs, fmt.Errorf("chart: series %d has an empty name", i))
		}
	}
	if len(l.Panels) == 0 {
		errs = append(errs, errors.New("chart: no panels"))
	}
	for i, p := range l.Panels {
		if len(p.Lines) != len(l.Series) {
			errs = append(errs, fmt.Errorf("chart: panel %d has %d lines for %d series", i, len(p.Lines), len(l.Series)))
		}
		for j, line := range p.Lines {
			for k, pt := range line {
				switch {
				case !finite(pt.X) || !finite(pt.Y):
					errs = append(errs, fmt.Errorf("chart: panel %d, line %d, point %d: (%v, %v) is not finite", i, j, k, pt.X, pt.Y))
				case pt.Y < 0:
					errs = append(errs, fmt.Errorf("chart: panel %d, line %d, point %d: value %v is negative", i, j, k, pt.Y))
				}
			}
		}
	}
	for i, m := range l.Marks {
		if !finite(m.X) {
			errs = append(errs, fmt.Errorf("chart: mark %d is at %v", i, m.X))
		}
	}
	return errors.Join(errs...)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// RenderLines validates l, draws it and writes it to w as a 960×720 PNG. It
// returns Validate's error, without writing anything, if l is invalid, and
// w's error, wrapped, if writing fails. It keeps neither l nor w and is
// safe for concurrent use.
func RenderLines(w io.Writer, l Lines) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if err := png.Encode(w, paintLines(l, newLinesLayout(l))); err != nil {
		return fmt.Errorf("chart: encode png: %w", err)
	}
	return nil
}

// linesLayout is where everything of a Lines chart goes.
type linesLayout struct {
	head
	xMin, xMax float64
	xTicks     []float64
	panels     []valueAxis // per panel; their plots share columns
}

func newLinesLayout(l Lines) linesLayout {
	ll := linesLayout{head: newHead(l.Note, l.Series)}
	ll.xMin, ll.xMax = math.Inf(1), math.Inf(-1)
	for _, p := range l.Panels {
		for _, line := range p.Lines {
			for _, pt := range line {
				ll.xMin, ll.xMax = min(ll.xMin, pt.X), max(ll.xMax, pt.X)
			}
		}
	}
	for _, m := range l.Marks {
		ll.xMin, ll.xMax = min(ll.xMin, m.X), max(ll.xMax, m.X)
	}
	if ll.xMin > ll.xMax { // no point at all
		ll.xMin, ll.xMax = 0, 1
	}
	ll.xMin = min(ll.xMin, 0) // a time axis starts at 0
	if ll.xMax == ll.xMin {
		ll.xMax = ll.xMin + 1
	}
	step := niceMax((ll.xMax - ll.xMin) / 5)
	for x := math.Ceil(ll.xMin/step) * step; x <= ll.xMax; x += step {
		ll.xTicks = append(ll.xTicks, x)
	}

	gutter := 0
	for _, p := range l.Panels {
		top := 0.0
		for _, line := range p.Lines {
			for _, pt := range line {
				top = max(top, pt.Y)
			}
		}
		a := newValueAxis(top)
		gutter = max(gutter, a.gutter(p.Unit))
		ll.panels = append(ll.panels, a)
	}
	lineH := face.Metrics().Height.Ceil()
	below := labelGap + lineH // the tick labels under each panel
	slot := (linesHeight - margin - ll.bottom) / len(l.Panels)
	for i := range ll.panels {
		top := ll.bottom + i*slot + plotHead
		ll.panels[i].plot = image.Rect(margin+gutter, top, width-margin, top+slot-plotHead-below)
	}
	return ll
}

// x returns the column of horizontal value v.
func (ll linesLayout) x(v float64) int {
	p := ll.panels[0].plot
	return p.Min.X + int(math.Round((v-ll.xMin)/(ll.xMax-ll.xMin)*float64(p.Dx()-1)))
}

// paintLines draws l as laid out by ll.
func paintLines(l Lines, ll linesLayout) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, width, linesHeight))
	fill(img, img.Bounds(), background)
	ll.head.paint(img, l.Title, l.Note, l.Series)
	ascent := face.Metrics().Ascent.Ceil()
	for i, p := range l.Panels {
		a := ll.panels[i]
		a.paint(img, p.Unit)
		for _, x := range ll.xTicks {
			c := ll.x(x)
			fill(img, image.Rect(c, a.plot.Max.Y+1, c+1, a.plot.Max.Y+1+tickLen), axisInk)
			centred(img, formatValue(x)+l.XUnit, c, a.plot.Max.Y+labelGap+ascent, muted)
		}
		for _, m := range l.Marks {
			c := ll.x(m.X)
			for y := a.plot.Min.Y; y < a.plot.Max.Y; y += 4 {
				fill(img, image.Rect(c, y, c+1, y+2), muted)
			}
			if i == 0 && m.Label != "" {
				drawText(img, m.Label, c+4, a.plot.Min.Y+ascent, muted)
			}
		}
		for s, line := range p.Lines {
			for k := range line {
				from := line[max(k-1, 0)]
				segment(img, image.Pt(ll.x(from.X), a.y(from.Y)), image.Pt(ll.x(line[k].X), a.y(line[k].Y)), s)
			}
		}
	}
	return img
}

// segment draws a line two pixels thick from p to q in series s's colour.
func segment(img *image.RGBA, p, q image.Point, s int) {
	dx, dy := abs(q.X-p.X), -abs(q.Y-p.Y)
	sx, sy := sign(q.X-p.X), sign(q.Y-p.Y)
	e := dx + dy
	for {
		fill(img, image.Rect(p.X, p.Y-1, p.X+1, p.Y+1), palette[s])
		if p == q {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			p.X += sx
		}
		if e2 <= dx {
			e += dx
			p.Y += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
