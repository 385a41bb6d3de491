// The MLP's elementwise loops besides the matrix products: bias and ReLU, the ReLU mask of the backward
// pass, column sums (the bias gradient) and the SGD update. Each runs over whole SIMD16<Float> vectors,
// then a scalar tail that computes the same IEEE operations in the same order, so a value's result does
// not depend on whether it fell in a vector or in the tail.

/// Elementwise loops on raw float buffers, SIMD with a scalar tail.
enum Elementwise {
    typealias Vector = SIMD16<Float>
    static let lanes = Vector.scalarCount

    /// `rows` × `cols` matrix `x` += `bias` (each row), then ReLU when `relu`.
    static func addBias(
        _ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, bias: UnsafePointer<Float>, relu: Bool
    ) {
        for i in 0..<rows {
            let row = x + i * cols
            var j = 0
            while j + lanes <= cols {
                var v = load(row + j) + load(bias + j)
                if relu { v.replace(with: 0, where: v .< 0) }
                store(v, row + j)
                j += lanes
            }
            while j < cols {
                let v = row[j] + bias[j]
                row[j] = relu && v < 0 ? 0 : v
                j += 1
            }
        }
    }

    /// The ReLU backward step, in place: `activation[i] = activation[i] > 0 ? upstream[i] : 0` (the
    /// activation buffer becomes the gradient with respect to the pre-activation).
    static func reluBackward(
        activation: UnsafeMutablePointer<Float>, upstream: UnsafePointer<Float>, count: Int
    ) {
        var i = 0
        while i + lanes <= count {
            let a = load(activation + i)
            store(load(upstream + i).replacing(with: 0, where: a .<= 0), activation + i)
            i += lanes
        }
        while i < count {
            activation[i] = activation[i] > 0 ? upstream[i] : 0
            i += 1
        }
    }

    /// `sums[j] = Σᵢ x[i][j]` over the rows of a `rows` × `cols` matrix, rows in order.
    static func columnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into sums: UnsafeMutablePointer<Float>) {
        sums.update(repeating: 0, count: cols)
        for i in 0..<rows {
            let row = x + i * cols
            var j = 0
            while j + lanes <= cols {
                store(load(sums + j) + load(row + j), sums + j)
                j += lanes
            }
            while j < cols {
                sums[j] += row[j]
                j += 1
            }
        }
    }

    /// SGD with momentum and L2 weight decay, in place: `g = gradient + decay·w; v = momentum·v + g;
    /// w = w − rate·v`.
    static func momentumStep(
        values w: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>, velocity v: UnsafeMutablePointer<Float>,
        count: Int, rate: Float, momentum: Float, decay: Float
    ) {
        let rateV = Vector(repeating: rate)
        let momentumV = Vector(repeating: momentum)
        let decayV = Vector(repeating: decay)
        var i = 0
        while i + lanes <= count {
            let wi = load(w + i)
            let g = load(gradient + i) + decayV * wi
            let vi = momentumV * load(v + i) + g
            store(vi, v + i)
            store(wi - rateV * vi, w + i)
            i += lanes
        }
        while i < count {
            let g = gradient[i] + decay * w[i]
            let vi = momentum * v[i] + g
            v[i] = vi
            w[i] = w[i] - rate * vi
            i += 1
        }
    }

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> Vector { UnsafeRawPointer(p).loadUnaligned(as: Vector.self) }

    @inline(__always)
    static func load(_ p: UnsafeMutablePointer<Float>) -> Vector {
        UnsafeRawPointer(p).loadUnaligned(as: Vector.self)
    }

    @inline(__always)
    static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vector.self)
    }
}
