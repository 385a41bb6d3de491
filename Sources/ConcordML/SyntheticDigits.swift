// Handwriting-like digits drawn procedurally, so the demo needs no download: 28 × 28 images in 0…1, the
// geometry of MNIST.
//
// Each digit is a few strokes (polylines, elliptic arcs, quadratic Bézier curves) defined in a unit box
// (x right, y down), with per-class variants (a 1 with or without flag and base, an open or closed 4, a 7
// with or without bar, a flat-topped 3, a straight or curled 9). Image i is drawn from its own generator
// `SplitMix64(seed:index: i)`:
//
//   1. every control point is jittered by up to ±0.07 of the box, every radius by ±12 %, every arc end by
//      ±10° (the shape);
//   2. the points go through a smooth quadratic warp (coefficients ±0.45), then scale (height 14–22 px,
//      width 70–105 % of it), slant (±0.4), rotation (±15°) and a shift of ±3 px (the pose);
//   3. each segment is rendered with anti-aliased thickness: a pixel's ink is
//      clamp(halfWidth + 0.5 − distance(pixel centre, segment), 0, 1) × ink, with a pen half-width of
//      0.7–1.7 px (±15 % per stroke) and ink 0.7–1, the maximum over segments;
//   4. clutter: background noise (up to 0.25 on 3 images in 4), up to 4 bright speckles, up to 8 dropouts
//      inside the strokes, a stray stroke (1 image in 4) and an erased 3–6 px square (1 in 5).
//
// Difficulty, measured with the demo recipe (`TrainingRecipe.demo`, MLP 784-256-128-10, batches of 256):
// test accuracy 41 % after 25 steps, 58 % after 50, 83 % after 100, 90 % after 200, 94 % after one epoch
// of 100 000 images (390 steps), 97.3 % after eight epochs, while the training accuracy reaches 99.4 %.
//
// Labels come in blocks of ten: image i has label perm_b[i mod 10], where perm_b is a permutation of 0…9
// drawn for block b = i / 10. So any 10 consecutive images starting at a multiple of 10 hold each digit once,
// a set of n images has ⌊n/10⌋ or ⌈n/10⌉ of each, and the order carries no pattern.
//
// Everything is integer arithmetic, IEEE float/double arithmetic and square roots (sine and cosine are
// polynomials below): the same (seed, index) gives the same bits on every machine, and a rank can draw
// just its shard (`make(range:seed:)`), identical to the same slice of the whole set. Speed, one core of
// this project's Xeon, release build: 45 000–64 000 images per second (`SyntheticDigitsTests`,
// CONCORD_ML_MEASURE=1).

/// Procedurally drawn, handwriting-like digits 0–9 on 28 × 28 pixels.
public enum SyntheticDigits {
    /// Image height.
    public static let rows = 28
    /// Image width.
    public static let cols = 28

    /// `count` images drawn with `seed`: image i is `make(range: i..<i+1, seed: seed)`.
    /// - Parameters:
    ///   - count: the number of images.
    ///   - seed: the data set's seed (use different seeds for training and test sets).
    public static func make(count: Int, seed: UInt64) -> Dataset {
        make(range: 0..<count, seed: seed)
    }

    /// The images with indices in `range` of the set drawn with `seed` (e.g. one rank's shard), equal to
    /// `make(count: range.upperBound, seed: seed).subset(range)` but drawing only these.
    /// - Parameters:
    ///   - range: image indices, ≥ 0.
    ///   - seed: the data set's seed.
    public static func make(range: Range<Int>, seed: UInt64) -> Dataset {
        precondition(range.lowerBound >= 0, "SyntheticDigits: negative index in \(range)")
        let pixels = rows * cols
        var labels = [UInt8](repeating: 0, count: range.count)
        let images = [Float](unsafeUninitializedCapacity: range.count * pixels) { buffer, initialized in
            var block = -1
            var permutation = [UInt8](0...9)
            for (slot, index) in range.enumerated() {
                if index / 10 != block {
                    block = index / 10
                    permutation = blockLabels(block, seed: seed)
                }
                let digit = permutation[index % 10]
                labels[slot] = digit
                var random = SplitMix64(seed: seed, index: UInt64(index))
                draw(digit: Int(digit), into: buffer.baseAddress! + slot * pixels, random: &random)
            }
            initialized = range.count * pixels
        }
        return Dataset(images: images, labels: labels, rows: rows, cols: cols, classes: 10)
    }

    /// The label of image `index` in the set drawn with `seed`.
    /// - Parameters:
    ///   - index: the image, ≥ 0.
    ///   - seed: the data set's seed.
    public static func label(of index: Int, seed: UInt64) -> UInt8 {
        blockLabels(index / 10, seed: seed)[index % 10]
    }

    /// Draws one image of `digit` into 28 × 28 floats (overwriting them), consuming `random`.
    /// - Parameters:
    ///   - digit: 0…9.
    ///   - pixels: 784 floats, row-major.
    ///   - random: the image's generator.
    public static func draw(digit: Int, into pixels: UnsafeMutablePointer<Float>, random: inout SplitMix64) {
        precondition((0...9).contains(digit), "SyntheticDigits: digit \(digit)")
        var pen = Pen(random: random)
        pen.glyph(digit)
        let pose = Pose(random: &pen.random)
        let canvas = UnsafeMutableBufferPointer(start: pixels, count: rows * cols)
        canvas.update(repeating: 0)
        let halfWidth = pen.random.nextFloat(0.7, 1.7)
        let ink = pen.random.nextFloat(0.7, 1.0)
        for stroke in pen.strokes {
            let strokeWidth = halfWidth * pen.random.nextFloat(0.85, 1.15)
            var previous = pose.apply(stroke[0])
            for point in stroke.dropFirst() {
                let next = pose.apply(point)
                renderSegment(previous, next, halfWidth: strokeWidth, ink: ink, canvas: canvas)
                previous = next
            }
        }
        addClutter(canvas, halfWidth: halfWidth, ink: ink, random: &pen.random)
        random = pen.random
    }

    /// The labels of block `block`: a permutation of 0…9.
    static func blockLabels(_ block: Int, seed: UInt64) -> [UInt8] {
        var labels = [UInt8](0...9)
        var random = SplitMix64(seed: seed ^ 0x5EED_0F1A_B35D_1617, index: UInt64(block))
        for i in stride(from: 9, to: 0, by: -1) { labels.swapAt(i, random.nextBelow(i + 1)) }
        return labels
    }

    // MARK: - Rendering

    /// Ink along the segment a–b (pixel coordinates): each pixel keeps the maximum of its ink and
    /// `ink · clamp(halfWidth + 0.5 − distance, 0, 1)`, measured from the pixel's centre.
    static func renderSegment(
        _ a: Point, _ b: Point, halfWidth: Float, ink: Float, canvas: UnsafeMutableBufferPointer<Float>
    ) {
        let reach = halfWidth + 0.5
        let x0 = max(0, Int((min(a.x, b.x) - reach).rounded(.down)))
        let x1 = min(cols - 1, Int((max(a.x, b.x) + reach).rounded(.up)))
        let y0 = max(0, Int((min(a.y, b.y) - reach).rounded(.down)))
        let y1 = min(rows - 1, Int((max(a.y, b.y) + reach).rounded(.up)))
        guard x0 <= x1, y0 <= y1 else { return }
        let dx = b.x - a.x
        let dy = b.y - a.y
        let lengthSquared = dx * dx + dy * dy
        for y in y0...y1 {
            let py = Float(y) + 0.5 - a.y
            for x in x0...x1 {
                let px = Float(x) + 0.5 - a.x
                var t: Float = 0
                if lengthSquared > 0 { t = min(1, max(0, (px * dx + py * dy) / lengthSquared)) }
                let ex = px - t * dx
                let ey = py - t * dy
                let coverage = min(1, reach - (ex * ex + ey * ey).squareRoot())
                if coverage > 0 {
                    let value = coverage * ink
                    if value > canvas[y * cols + x] { canvas[y * cols + x] = value }
                }
            }
        }
    }

    /// Background noise, speckles, dropouts in the strokes, sometimes a stray stroke or an erased patch;
    /// then clamps to 0…1.
    static func addClutter(
        _ canvas: UnsafeMutableBufferPointer<Float>, halfWidth: Float, ink: Float, random: inout SplitMix64
    ) {
        let pixels = canvas.count
        if random.chance(0.25) {  // a stray stroke: a short line somewhere
            let a = Point(x: random.nextFloat(0, 28), y: random.nextFloat(0, 28))
            let angle = random.nextDouble() * 360
            let length = random.nextFloat(4, 10)
            let (s, c) = sinCos(degrees: angle)
            let b = Point(x: a.x + length * Float(c), y: a.y + length * Float(s))
            renderSegment(a, b, halfWidth: halfWidth * 0.8, ink: ink * 0.9, canvas: canvas)
        }
        if random.chance(0.2) {  // an erased patch
            let size = 3 + random.nextBelow(4)
            let x0 = 4 + random.nextBelow(20 - size)
            let y0 = 4 + random.nextBelow(20 - size)
            for y in y0..<y0 + size { for x in x0..<x0 + size { canvas[y * cols + x] = 0 } }
        }
        for _ in 0..<random.nextBelow(9) {  // dropouts: pick inked pixels
            for _ in 0..<12 {
                let p = random.nextBelow(pixels)
                if canvas[p] > 0.2 {
                    canvas[p] = 0
                    break
                }
            }
        }
        let noise = random.chance(0.75) ? random.nextFloat(0, 0.25) : 0
        if noise > 0 {
            for p in 0..<pixels { canvas[p] += noise * random.nextFloat() * random.nextFloat() }
        }
        for _ in 0..<random.nextBelow(5) { canvas[random.nextBelow(pixels)] = random.nextFloat(0.4, 1) }
        for p in 0..<pixels { canvas[p] = min(1, max(0, canvas[p])) }
    }

    // MARK: - Geometry

    /// A point in glyph space (unit box, y down) or in pixels.
    struct Point {
        var x: Float
        var y: Float
    }

    /// The per-image transform from glyph space to pixels: warp, scale, slant, rotation, shift.
    struct Pose {
        var warp: (Float, Float, Float)
        var scaleX: Float
        var scaleY: Float
        var slant: Float
        var cosine: Float
        var sine: Float
        var centerX: Float
        var centerY: Float

        init(random: inout SplitMix64) {
            warp = (random.nextFloat(-0.45, 0.45), random.nextFloat(-0.45, 0.45), random.nextFloat(-0.45, 0.45))
            scaleY = random.nextFloat(14, 22)
            scaleX = scaleY * random.nextFloat(0.7, 1.05)
            slant = random.nextFloat(-0.4, 0.4)
            let (s, c) = sinCos(degrees: random.nextDouble() * 30 - 15)
            sine = Float(s)
            cosine = Float(c)
            centerX = 14 + random.nextFloat(-3, 3)
            centerY = 14 + random.nextFloat(-3, 3)
        }

        func apply(_ p: Point) -> Point {
            var x = p.x - 0.5
            var y = p.y - 0.5
            let (w0, w1, w2) = warp
            (x, y) = (x + w0 * y * y + w1 * x * y, y + w2 * x * x)
            x *= scaleX
            y *= scaleY
            x -= slant * y
            return Point(x: centerX + cosine * x - sine * y, y: centerY + sine * x + cosine * y)
        }
    }

    /// Builds the strokes of a glyph in the unit box, jittering every coordinate it is given.
    struct Pen {
        var random: SplitMix64
        var strokes: [[Point]] = []
        /// The jitter of control points, in glyph units.
        let jitter: Float = 0.07

        init(random: SplitMix64) { self.random = random }

        /// A jittered point.
        mutating func p(_ x: Float, _ y: Float) -> Point {
            Point(x: x + random.nextFloat(-jitter, jitter), y: y + random.nextFloat(-jitter, jitter))
        }

        mutating func line(_ points: Point...) { strokes.append(points) }

        /// An elliptic arc from `from`° to `to`° (0° = right, 90° = down), radii and angles jittered;
        /// returns its end point.
        @discardableResult
        mutating func arc(
            _ cx: Float, _ cy: Float, _ rx: Float, _ ry: Float, from: Double, to: Double, prefix: [Point] = []
        ) -> Point {
            let center = p(cx, cy)
            let radiusX = rx * random.nextFloat(0.88, 1.12)
            let radiusY = ry * random.nextFloat(0.88, 1.12)
            let start = from + random.nextDouble() * 20 - 10
            let end = to + random.nextDouble() * 20 - 10
            let steps = max(3, Int(abs(end - start) / 12))
            var points = prefix
            for i in 0...steps {
                let (s, c) = sinCos(degrees: start + (end - start) * Double(i) / Double(steps))
                points.append(Point(x: center.x + radiusX * Float(c), y: center.y + radiusY * Float(s)))
            }
            strokes.append(points)
            return points[points.count - 1]
        }

        /// A quadratic Bézier curve from a to b pulled towards `control`.
        mutating func curve(_ a: Point, _ control: Point, _ b: Point) {
            var points: [Point] = []
            for i in 0...10 {
                let t = Float(i) / 10
                let u = 1 - t
                points.append(
                    Point(
                        x: u * u * a.x + 2 * u * t * control.x + t * t * b.x,
                        y: u * u * a.y + 2 * u * t * control.y + t * t * b.y))
            }
            strokes.append(points)
        }

        /// The strokes of `digit`, one of its variants.
        mutating func glyph(_ digit: Int) {
            switch digit {
            case 0:
                let start = 250 + random.nextDouble() * 40
                arc(0.5, 0.5, 0.27, 0.41, from: start, to: start + 360 + random.nextDouble() * 30 - 20)
            case 1:
                let top = p(0.53, 0.06)
                if random.chance(0.5) { line(p(0.33, 0.26), top) }
                line(top, p(0.47, 0.94))
                if random.chance(0.25) { line(p(0.32, 0.94), p(0.68, 0.94)) }
            case 2:
                let end = arc(0.5, 0.31, 0.25, 0.23, from: 195, to: 380)
                let corner = p(0.2, 0.92)
                if random.chance(0.35) { curve(end, p(0.42, 0.62), corner) } else { line(end, corner) }
                line(corner, p(0.82, 0.92))
            case 3:
                if random.chance(0.8) {
                    arc(0.48, 0.29, 0.23, 0.2, from: 200, to: 450)
                    arc(0.48, 0.7, 0.27, 0.23, from: 270, to: 515)
                } else {
                    line(p(0.22, 0.08), p(0.75, 0.08), p(0.42, 0.42))
                    arc(0.47, 0.68, 0.28, 0.25, from: 250, to: 510)
                }
            case 4:
                if random.chance(0.6) {
                    line(p(0.64, 0.94), p(0.64, 0.06), p(0.16, 0.66), p(0.84, 0.66))
                } else {
                    line(p(0.26, 0.06), p(0.2, 0.6), p(0.84, 0.6))
                    line(p(0.64, 0.25), p(0.64, 0.95))
                }
            case 5:
                let corner = p(0.29, 0.44)
                line(p(0.78, 0.08), p(0.33, 0.08), corner)
                arc(0.49, 0.66, 0.27, 0.26, from: 215, to: 495)
            case 6:
                curve(p(0.72, 0.08), p(0.28, 0.2), p(0.26, 0.68))
                let start = 160 + random.nextDouble() * 40
                arc(0.5, 0.7, 0.24, 0.22, from: start, to: start + 360)
            case 7:
                let corner = p(0.82, 0.08)
                if random.chance(0.2) {
                    line(p(0.18, 0.2), p(0.18, 0.08), corner, p(0.4, 0.94))
                } else {
                    line(p(0.18, 0.08), corner, p(0.4, 0.94))
                }
                if random.chance(0.3) { line(p(0.33, 0.52), p(0.72, 0.5)) }
            case 8:
                let upper = 60 + random.nextDouble() * 60
                arc(0.5, 0.28, 0.2, 0.19, from: upper, to: upper + 360)
                let lower = 240 + random.nextDouble() * 60
                arc(0.5, 0.7, 0.25, 0.23, from: lower, to: lower + 360)
            default:
                let start = random.nextDouble() * 90
                let join = arc(0.48, 0.32, 0.22, 0.21, from: start, to: start + 360)
                if random.chance(0.6) {
                    line(join, p(0.64, 0.94))
                } else {
                    curve(join, p(0.72, 0.8), p(0.35, 0.92))
                }
            }
        }
    }
}

/// (sin, cos) of an angle in degrees: reduced to [−45°, 45°] around a multiple of 90°, then Taylor
/// polynomials to x¹³ / x¹⁴ (error below 1e-12). Plain double arithmetic: the same bits everywhere.
func sinCos(degrees: Double) -> (sin: Double, cos: Double) {
    let quarter = (degrees / 90).rounded()
    let x = (degrees - 90 * quarter) * (Double.pi / 180)
    let x2 = x * x
    var s = 1.0
    var c = 1.0
    for n in stride(from: 13, through: 3, by: -2) { s = 1 - s * x2 / Double(n * (n - 1)) }
    for n in stride(from: 14, through: 2, by: -2) { c = 1 - c * x2 / Double(n * (n - 1)) }
    s *= x
    switch Int(quarter) & 3 {
    case 0: return (s, c)
    case 1: return (c, -s)
    case 2: return (-s, -c)
    default: return (-c, s)
    }
}
