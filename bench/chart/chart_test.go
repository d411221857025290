package chart

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"math"
	"testing"
)

func TestValidate(t *testing.T) {
	groups := []string{"p50", "p99"}
	tests := []struct {
		name    string
		chart   Chart
		wantErr string // "" for a valid chart
	}{
		{
			name: "valid",
			chart: Chart{Groups: groups, Series: []Series{
				{Name: "direct", Values: []float64{1, 2}},
				{Name: "pillion", Values: []float64{math.NaN(), -1}},
			}},
		},
		{
			name:    "zero chart",
			chart:   Chart{},
			wantErr: "chart: no groups\nchart: no series",
		},
		{
			name:    "no groups",
			chart:   Chart{Series: []Series{{Name: "direct", Values: []float64{}}}},
			wantErr: "chart: no groups",
		},
		{
			name:    "no series",
			chart:   Chart{Groups: groups},
			wantErr: "chart: no series",
		},
		{
			name:    "empty group label",
			chart:   Chart{Groups: []string{"p50", ""}, Series: []Series{{Name: "direct", Values: []float64{1, 2}}}},
			wantErr: "chart: group 1 has an empty label",
		},
		{
			name:    "empty series name",
			chart:   Chart{Groups: groups, Series: []Series{{Name: "direct", Values: []float64{1, 2}}, {Values: []float64{1, 2}}}},
			wantErr: "chart: series 1 has an empty name",
		},
		{
			name:    "too few values",
			chart:   Chart{Groups: groups, Series: []Series{{Name: "pillion", Values: []float64{1}}}},
			wantErr: `chart: series "pillion" has 1 values for 2 groups`,
		},
		{
			name:    "too many values, unnamed series",
			chart:   Chart{Groups: groups, Series: []Series{{Values: []float64{1, 2, 3}}}},
			wantErr: "chart: series 0 has an empty name\nchart: series 0 has 3 values for 2 groups",
		},
		{
			name:    "+Inf",
			chart:   Chart{Groups: groups, Series: []Series{{Name: "haproxy", Values: []float64{1, math.Inf(1)}}}},
			wantErr: `chart: series "haproxy", group "p99": value is +Inf`,
		},
		{
			name:    "too many series",
			chart:   Chart{Groups: []string{"p50"}, Series: nSeries(9)},
			wantErr: "chart: 9 series, but only 8 can have distinct colours",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.chart.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("Validate() = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

// nSeries returns n valid series of one value each.
func nSeries(n int) []Series {
	s := make([]Series, n)
	for i := range s {
		s[i] = Series{Name: string(rune('a' + i)), Values: []float64{float64(i)}}
	}
	return s
}

func TestNiceMax(t *testing.T) {
	tests := []struct{ in, want float64 }{
		{0, 1}, {-3, 1}, {math.NaN(), 1},
		{0.8, 1}, {1, 1}, {1.2, 2}, {2, 2}, {2.1, 2.5}, {2.5, 2.5}, {3, 5}, {7, 10},
		{130, 200}, {1000, 1000}, {0.03, 0.05}, {0.0042, 0.005}, {99.9, 100},
	}
	for _, tt := range tests {
		if got := niceMax(tt.in); got != tt.want {
			t.Errorf("niceMax(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"}, {0.25, "0.25"}, {0.15000000000000002, "0.15"}, {1.5, "1.5"}, {1.875, "1.875"},
		{12, "12"}, {12.3456, "12.35"}, {250, "250"}, {1234.4, "1234"}, {0.99996, "1"},
		{0.0004, "0.0004"}, {2.5e-5, "2.5e-05"}, {3.25e7, "3.25e+07"},
	}
	for _, tt := range tests {
		if got := formatValue(tt.in); got != tt.want {
			t.Errorf("formatValue(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// testChart has a tallest bar (pillion p99, 9.5, axis up to 10) and two
// missing values (haproxy p90 NaN, haproxy p99.9 negative).
func testChart() Chart {
	return Chart{
		Title:  "pillion benchmark",
		Unit:   "ms",
		Note:   "2-core VM, 2025-01-01",
		Groups: []string{"p50", "p90", "p99", "p99.9"},
		Series: []Series{
			{Name: "direct", Values: []float64{1, 2, 3, 4}},
			{Name: "pillion", Values: []float64{1.5, 2.5, 9.5, 6}},
			{Name: "haproxy", Values: []float64{1.2, math.NaN(), 4, -1}},
		},
	}
}

// render renders c and decodes the PNG back.
func render(t *testing.T, c Chart) image.Image {
	t.Helper()
	var buf bytes.Buffer
	if err := Render(&buf, c); err != nil {
		t.Fatalf("Render: %v", err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("decode the PNG: %v", err)
	}
	return img
}

func at(img image.Image, x, y int) color.RGBA {
	return color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
}

// barHeight counts the rows of colour c going up column x from the baseline.
func barHeight(img image.Image, x, baseline int, c color.RGBA) int {
	h := 0
	for y := baseline - 1; y >= 0 && at(img, x, y) == c; y-- {
		h++
	}
	return h
}

func TestRenderSize(t *testing.T) {
	got := render(t, testChart()).Bounds()
	if want := image.Rect(0, 0, 960, 540); got != want {
		t.Errorf("bounds = %v, want %v", got, want)
	}
}

func TestRenderTallestBar(t *testing.T) {
	c := testChart()
	img := render(t, c)
	l := newLayout(c)
	if l.axisMax != 10 {
		t.Fatalf("axisMax = %v, want 10", l.axisMax)
	}
	r := l.bar(2, 1, 9.5)
	if want := int(math.Round(0.95 * float64(l.plot.Dy()))); r.Dy() != want {
		t.Errorf("bar height = %d, want %d (95%% of the plot's %d)", r.Dy(), want, l.plot.Dy())
	}
	mid := (r.Min.X + r.Max.X) / 2
	colour := palette[1]
	if got := at(img, mid, (r.Min.Y+r.Max.Y)/2); got != colour {
		t.Errorf("centre of the bar is %v, want the series' colour %v", got, colour)
	}
	for _, p := range []image.Point{
		{mid, r.Min.Y}, {mid, r.Max.Y - 1}, {r.Min.X, (r.Min.Y + r.Max.Y) / 2}, {r.Max.X - 1, (r.Min.Y + r.Max.Y) / 2},
	} {
		if got := at(img, p.X, p.Y); got != colour {
			t.Errorf("pixel %v inside the bar is %v, want %v", p, got, colour)
		}
	}
	for _, p := range []image.Point{
		{mid, r.Min.Y - 1}, {mid, r.Max.Y}, {r.Min.X - 1, (r.Min.Y + r.Max.Y) / 2}, {r.Max.X, (r.Min.Y + r.Max.Y) / 2},
	} {
		if got := at(img, p.X, p.Y); got == colour {
			t.Errorf("pixel %v just outside the bar has the bar's colour", p)
		}
	}
}

func TestRenderTallerValueTallerBar(t *testing.T) {
	c := testChart()
	img := render(t, c)
	l := newLayout(c)
	heights := make(map[[2]int]int) // {group, series} → pixels counted in the picture
	for s, series := range c.Series {
		for g, v := range series.Values {
			r := l.bar(g, s, v)
			h := barHeight(img, (r.Min.X+r.Max.X)/2, l.plot.Max.Y, palette[s])
			if h != r.Dy() {
				t.Errorf("series %d group %d (%v): %d pixels tall in the picture, layout says %d", s, g, v, h, r.Dy())
			}
			heights[[2]int{g, s}] = h
		}
	}
	for _, pair := range [][2][2]int{
		{{2, 1}, {0, 1}}, // pillion: 9.5 over 1.5
		{{3, 1}, {1, 1}}, // pillion: 6 over 2.5
		{{2, 1}, {2, 2}}, // p99: pillion 9.5 over haproxy 4
		{{1, 0}, {0, 2}}, // direct 2 over haproxy 1.2
	} {
		taller, shorter := heights[pair[0]], heights[pair[1]]
		if taller <= shorter {
			t.Errorf("bar %v is %d pixels, not taller than bar %v at %d", pair[0], taller, pair[1], shorter)
		}
	}
}

func TestRenderNoValue(t *testing.T) {
	c := testChart()
	img := render(t, c)
	l := newLayout(c)
	for _, g := range []int{1, 3} { // haproxy p90 is NaN, p99.9 is -1
		r := l.bar(g, 2, c.Series[2].Values[g])
		if !r.Empty() || r.Dx() != l.barW {
			t.Fatalf("group %d: bar %v, want the bar's columns with no height", g, r)
		}
		mid := (r.Min.X + r.Max.X) / 2
		for y := l.plot.Min.Y; y < l.plot.Max.Y; y++ {
			switch got := at(img, mid, y); got {
			case background, gridInk, muted:
			default:
				t.Errorf("group %d: pixel (%d,%d) in the empty column is %v, want background, grid or the \"n/a\" label", g, mid, y, got)
			}
		}
		if !hasColour(img, image.Rect(mid-12, l.plot.Max.Y-16, mid+12, l.plot.Max.Y), muted) {
			t.Errorf("group %d: no \"n/a\" above the baseline at column %d", g, mid)
		}
	}
}

func hasColour(img image.Image, r image.Rectangle, c color.RGBA) bool {
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if at(img, x, y) == c {
				return true
			}
		}
	}
	return false
}

func TestRenderAllZero(t *testing.T) {
	c := Chart{Groups: []string{"p50"}, Series: []Series{{Name: "direct", Values: []float64{0}}}}
	img := render(t, c)
	l := newLayout(c)
	if l.axisMax != 1 {
		t.Errorf("axisMax = %v, want 1", l.axisMax)
	}
	r := l.bar(0, 0, 0)
	if h := barHeight(img, (r.Min.X+r.Max.X)/2, l.plot.Max.Y, palette[0]); h != 0 {
		t.Errorf("a zero value drew a bar %d pixels tall", h)
	}
}

func TestRenderInvalid(t *testing.T) {
	var buf bytes.Buffer
	err := Render(&buf, Chart{Groups: []string{"p50"}})
	if err == nil || err.Error() != "chart: no series" {
		t.Errorf("Render = %v, want chart: no series", err)
	}
	if buf.Len() != 0 {
		t.Errorf("Render wrote %d bytes for an invalid chart", buf.Len())
	}
}

type failingWriter struct{}

var errWrite = errors.New("disk full")

func (failingWriter) Write([]byte) (int, error) { return 0, errWrite }

func TestRenderWriteError(t *testing.T) {
	err := Render(failingWriter{}, testChart())
	if !errors.Is(err, errWrite) || err.Error() != "chart: encode png: disk full" {
		t.Errorf("Render = %v, want chart: encode png: disk full", err)
	}
}

func TestLegendWraps(t *testing.T) {
	c := testChart()
	for _, name := range []string{"envoy-sidecar-with-a-long-name", "istio-ambient-ztunnel-node-proxy", "caddy-reverse-proxy", "nginx-plus-r33"} {
		c.Series = append(c.Series, Series{Name: name, Values: []float64{1, 2, 3, 4}})
	}
	l := newLayout(c)
	first, last := l.legend[0], l.legend[len(l.legend)-1]
	if last.Y <= first.Y {
		t.Errorf("legend did not wrap: first entry at %v, last at %v", first, last)
	}
	for i, p := range l.legend {
		if right := p.X + swatch + swatch/2 + textWidth(c.Series[i].Name); right > width-margin {
			t.Errorf("legend entry %q ends at column %d, past the margin at %d", c.Series[i].Name, right, width-margin)
		}
	}
	if l.plot.Min.Y <= last.Y {
		t.Errorf("plot starts at row %d, above the legend's last line at %d", l.plot.Min.Y, last.Y)
	}
	img := render(t, c) // still renders
	if got := at(img, last.X+1, last.Y-1); got != palette[len(c.Series)-1] {
		t.Errorf("last legend swatch is %v, want %v", got, palette[len(c.Series)-1])
	}
}
