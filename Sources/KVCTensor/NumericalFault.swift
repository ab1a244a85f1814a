import Foundation
import KVCCore

/// Stops training at the first non-finite number, saying where it appeared: the step, and for tensors the
/// parameter's name and the element. A run that diverged is never saved over its last good checkpoint: trainers call
/// these before `optimizer.step()` (loss, gradients) and `TrainingCheckpoint.save` refuses non-finite parameters.
public enum NumericalFault {
    /// Throws if `loss` is NaN or infinite.
    public static func checkLoss(_ loss: Double, step: Int, context: String) throws {
        guard loss.isFinite else {
            throw KVCError("\(context): loss is \(loss) at step \(step); stopping (the last good checkpoint is kept)")
        }
    }

    /// Throws naming the first parameter whose current gradient holds a NaN or infinity.
    public static func checkGradients(_ parameters: [(name: String, tensor: Tensor)], step: Int, context: String) throws {
        for (name, t) in parameters {
            guard let g = t.gradPointer, let i = firstNonFinite(g, count: t.count) else { continue }
            throw KVCError("\(context): gradient of '\(name)' is \(g[i]) at step \(step) (element \(i) of shape "
                           + "\(t.shape)); stopping (the last good checkpoint is kept)")
        }
    }

    /// Throws naming the first tensor that holds a NaN or infinity.
    public static func checkValues(_ parameters: [(name: String, tensor: Tensor)], step: Int, context: String) throws {
        for (name, t) in parameters {
            guard let i = firstNonFinite(t.data, count: t.count) else { continue }
            throw KVCError("\(context): parameter '\(name)' is \(t.data[i]) at step \(step) (element \(i) of shape "
                           + "\(t.shape)); the run diverged, nothing is saved")
        }
    }

    /// Index of the first NaN or infinity, nil if all `count` values are finite.
    public static func firstNonFinite(_ p: UnsafePointer<Float>, count: Int) -> Int? {
        // Sum first (vectorised, one pass): NaN and infinities propagate, so the scan below runs only on a fault.
        var sum: Float = 0
        for i in 0..<count { sum += p[i] * 0 }
        if sum.isFinite { return nil }
        return (0..<count).first { !p[$0].isFinite }
    }
}
