package chart

import (
	"bytes"
	"image"
	"image/png"
	"math"
	"strings"
	"testing"
)

// testLines: two series over 0..100 s in two panels. In the first, series
// 0 is flat at 5 and series 1 rises from 0 to 8; in the second, series 0
// is empty and series 1 a single point.
func testLines() Lines {
	return Lines{
		Title:  "soak",
		Note:   "2 cores",
		XUnit:  "s",
		Series: []string{"a", "b"},
		Panels: []Panel{
			{Unit: "MiB", Lines: [][]Point{{{0, 5}, {50, 5}, {100, 5}}, {{0, 0}, {100, 8}}}},
			{Unit: "fds", Lines: [][]Point{nil, {{40, 3}}}},
		},
		Marks: []Mark{{X: 20, Label: "warm-up"}},
	}
}

func renderLines(t *testing.T, l Lines) image.Image {
	t.Helper()
	var buf bytes.Buffer
	if err := RenderLines(&buf, l); err != nil {
		t.Fatalf("RenderLines: %v", err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("decode the PNG: %v", err)
	}
	return img
}

func TestRenderLines(t *testing.T) {
	l := testLines()
	img := renderLines(t, l)
	if got, want := img.Bounds(), image.Rect(0, 0, 960, 720); got != want {
		t.Fatalf("size %v, want %v", got, want)
	}
	ll := newLinesLayout(l)
	if ll.xMin != 0 || ll.xMax != 100 || ll.panels[0].axisMax != 10 || ll.panels[1].axisMax != 5 {
		t.Fatalf("x %v..%v, axes up to %v and %v; want 0..100, 10 and 5", ll.xMin, ll.xMax, ll.panels[0].axisMax, ll.panels[1].axisMax)
	}
	if p0, p1 := ll.panels[0].plot, ll.panels[1].plot; p0.Max.Y >= p1.Min.Y || p0.Min.X != p1.Min.X || p0.Max.X != p1.Max.X {
		t.Fatalf("panels %v and %v: want one above the other, in the same columns", p0, p1)
	}
	a := ll.panels[0]
	// The flat line is at half the first plot's height all along.
	for _, x := range []float64{10, 50, 90} {
		if got := at(img, ll.x(x), a.y(5)); got != palette[0] {
			t.Errorf("series 0 at x=%v: %v, want %v", x, got, palette[0])
		}
	}
	// The rising line passes through (50, 4) and ends at (100, 8).
	for _, pt := range []Point{{50, 4}, {100, 8}} {
		if !hasColour(img, image.Rect(ll.x(pt.X)-1, a.y(pt.Y)-1, ll.x(pt.X)+2, a.y(pt.Y)+2), palette[1]) {
			t.Errorf("series 1 does not pass through %v", pt)
		}
	}
	// The single point is a dot; the empty line draws nothing.
	b := ll.panels[1]
	if got := at(img, ll.x(40), b.y(3)); got != palette[1] {
		t.Errorf("series 1's dot in panel 2: %v, want %v", got, palette[1])
	}
	if hasColour(img, b.plot, palette[0]) {
		t.Error("panel 2 has series 0's colour, but its line is empty")
	}
	// The mark is dotted across both plots.
	for _, p := range ll.panels {
		if !hasColour(img, image.Rect(ll.x(20), p.plot.Min.Y, ll.x(20)+1, p.plot.Min.Y+4), muted) {
			t.Errorf("no mark at x=20 in the plot at %v", p.plot)
		}
	}
}

// TestSegmentEnds: lines of every slope end where they should (and end).
func TestSegmentEnds(t *testing.T) {
	img := image.NewRGBA(image.Rect(0, 0, 100, 100))
	from := image.Pt(50, 50)
	for _, to := range []image.Point{{90, 52}, {52, 90}, {10, 48}, {48, 10}, {90, 10}, {10, 90}, {50, 50}, {50, 80}, {80, 50}, {52, 51}, {46, 47}} {
		segment(img, from, to, 1)
		if got := at(img, to.X, to.Y); got != palette[1] {
			t.Errorf("segment %v to %v: its end is %v, want %v", from, to, got, palette[1])
		}
	}
}

func TestLinesValidate(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name string
		edit func(*Lines)
		want string
	}{
		{"valid", func(*Lines) {}, ""},
		{"empty", func(l *Lines) { *l = Lines{} }, "chart: no series\nchart: no panels"},
		{"unnamed series", func(l *Lines) { l.Series[1] = "" }, "chart: series 1 has an empty name"},
		{"lines per panel", func(l *Lines) { l.Panels[1].Lines = l.Panels[1].Lines[:1] }, "chart: panel 1 has 1 lines for 2 series"},
		{"not finite", func(l *Lines) { l.Panels[0].Lines[0][1].Y = nan }, "chart: panel 0, line 0, point 1: (50, NaN) is not finite"},
		{"negative", func(l *Lines) { l.Panels[1].Lines[1][0].Y = -1 }, "chart: panel 1, line 1, point 0: value -1 is negative"},
		{"mark", func(l *Lines) { l.Marks[0].X = math.Inf(1) }, "chart: mark 0 is at +Inf"},
		{"too many series", func(l *Lines) {
			l.Series = strings.Split("a b c d e f g h i", " ")
			for i := range l.Panels {
				l.Panels[i].Lines = make([][]Point, len(l.Series))
			}
		}, "chart: 9 series, but only 8 can have distinct colours"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := testLines()
			tc.edit(&l)
			err := l.Validate()
			if got := errString(err); got != tc.want {
				t.Errorf("Validate:\n%s\nwant:\n%s", got, tc.want)
			}
			if err != nil {
				if rerr := RenderLines(&bytes.Buffer{}, l); errString(rerr) != tc.want {
					t.Errorf("RenderLines = %v, want Validate's error", rerr)
				}
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
