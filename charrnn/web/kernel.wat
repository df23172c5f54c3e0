;; The web page's fast step, in WebAssembly 128-bit SIMD (f32x4): the matrix-vector products of
;; the rnn, lstm and gru layers and of the output layer, and each cell's gate arithmetic. Sums and
;; gates are float32, as in PyTorch's own kernels; exp follows Cephes' expf (within 2 ulp).
;;
;; The products multiply and add with relaxed SIMD's f32x4.relaxed_madd: a fused multiply-add
;; where the CPU has one (1.04-1.2x the products' speed in Chromium). build_kernel.py also builds
;; this text with each relaxed_madd as a plain multiply and add, the other result relaxed_madd
;; allows, for the engines without relaxed SIMD (Safari).
;;
;; Rebuild kernel.js from this file after any change (tests/test_web_kernel.py checks that they agree):
;;     pip install "wasmtime==51.*" && python charrnn/web/build_kernel.py
(module
  ;; The page grows this memory once, to hold the weights and the step's vectors, before any call.
  ;; Every argument named for a vector is the byte offset of a float32 array in it. The gate
  ;; functions work four units at a time, so a vector of n units is read and written up to the
  ;; next multiple of 4: the page leaves that room after each one.
  (memory (export "memory") 1)

  ;; out[r] = b[r] + the sum over j of w[r * cols + j] * x[j], for r < rows; w is row-major,
  ;; PyTorch's layout. Rows go four at a time so that each load of x serves four rows, and columns eight at
  ;; a time into two sets of sums, so that no sum waits on the one before it.
  (func (export "affine")
    (param $w i32) (param $b i32) (param $x i32) (param $out i32) (param $rows i32) (param $cols i32)
    (local $stride i32) (local $whole i32) (local $r i32) (local $row i32) (local $j i32) (local $p i32)
    (local $x0 v128) (local $x1 v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 2)))
    (local.set $whole (i32.and (local.get $stride) (i32.const -16))) ;; bytes of whole groups of 4
    (block $blocks_done
      (loop $blocks
        (br_if $blocks_done (i32.gt_u (i32.add (local.get $r) (i32.const 4)) (local.get $rows)))
        (local.set $row (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $stride))))
        (local.set $a0 (v128.const i32x4 0 0 0 0)) (local.set $b0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0)) (local.set $b1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0)) (local.set $b2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0)) (local.set $b3 (v128.const i32x4 0 0 0 0))
        (local.set $j (i32.const 0))
        (block $eights_done
          (loop $eights
            (br_if $eights_done (i32.gt_u (i32.add (local.get $j) (i32.const 32)) (local.get $whole)))
            (local.set $x0 (v128.load align=4 (i32.add (local.get $x) (local.get $j))))
            (local.set $x1 (v128.load offset=16 align=4 (i32.add (local.get $x) (local.get $j))))
            (local.set $p (i32.add (local.get $row) (local.get $j)))
            (local.set $a0 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a0)))
            (local.set $b0 (f32x4.relaxed_madd (v128.load offset=16 align=4 (local.get $p)) (local.get $x1) (local.get $b0)))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $a1 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a1)))
            (local.set $b1 (f32x4.relaxed_madd (v128.load offset=16 align=4 (local.get $p)) (local.get $x1) (local.get $b1)))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $a2 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a2)))
            (local.set $b2 (f32x4.relaxed_madd (v128.load offset=16 align=4 (local.get $p)) (local.get $x1) (local.get $b2)))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $a3 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a3)))
            (local.set $b3 (f32x4.relaxed_madd (v128.load offset=16 align=4 (local.get $p)) (local.get $x1) (local.get $b3)))
            (local.set $j (i32.add (local.get $j) (i32.const 32)))
            (br $eights)))
        (if (i32.lt_u (local.get $j) (local.get $whole)) ;; one group of 4 columns left over
          (then
            (local.set $x0 (v128.load align=4 (i32.add (local.get $x) (local.get $j))))
            (local.set $p (i32.add (local.get $row) (local.get $j)))
            (local.set $a0 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a0)))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $a1 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a1)))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $a2 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a2)))
            (local.set $p (i32.add (local.get $p) (local.get $stride)))
            (local.set $a3 (f32x4.relaxed_madd (v128.load align=4 (local.get $p)) (local.get $x0) (local.get $a3)))))
        (v128.store align=4 (i32.add (local.get $out) (i32.shl (local.get $r) (i32.const 2)))
          (f32x4.add
            (call $lane_sums
              (f32x4.add (local.get $a0) (local.get $b0)) (f32x4.add (local.get $a1) (local.get $b1))
              (f32x4.add (local.get $a2) (local.get $b2)) (f32x4.add (local.get $a3) (local.get $b3)))
            (v128.load align=4 (i32.add (local.get $b) (i32.shl (local.get $r) (i32.const 2))))))
        (if (i32.ne (local.get $whole) (local.get $stride)) ;; the last cols % 4 columns of the four rows
          (then
            (local.set $p (i32.add (local.get $out) (i32.shl (local.get $r) (i32.const 2))))
            (call $add_tail (local.get $row) (local.get $x) (local.get $p) (local.get $whole) (local.get $stride))
            (local.set $row (i32.add (local.get $row) (local.get $stride)))
            (call $add_tail (local.get $row) (local.get $x) (i32.add (local.get $p) (i32.const 4)) (local.get $whole) (local.get $stride))
            (local.set $row (i32.add (local.get $row) (local.get $stride)))
            (call $add_tail (local.get $row) (local.get $x) (i32.add (local.get $p) (i32.const 8)) (local.get $whole) (local.get $stride))
            (local.set $row (i32.add (local.get $row) (local.get $stride)))
            (call $add_tail (local.get $row) (local.get $x) (i32.add (local.get $p) (i32.const 12)) (local.get $whole) (local.get $stride))))
        (local.set $r (i32.add (local.get $r) (i32.const 4)))
        (br $blocks)))
    ;; the last rows % 4 rows, one at a time and in plain arithmetic: a few rows at most
    (block $rest_done
      (loop $rest
        (br_if $rest_done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $p (i32.add (local.get $out) (i32.shl (local.get $r) (i32.const 2))))
        (f32.store (local.get $p) (f32.load (i32.add (local.get $b) (i32.shl (local.get $r) (i32.const 2)))))
        (call $add_tail (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $stride))) (local.get $x)
          (local.get $p) (i32.const 0) (local.get $stride))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rest))))

;; nn.LSTM's cell, blocks i, f, g, o of gi = W_ih x + b_ih and gh = W_hh h + b_hh (n units each):
  ;; c_out = f c + i g and h_out = o tanh(c_out).
  (func (export "lstm_gates")
    (param $gi i32) (param $gh i32) (param $c i32) (param $h_out i32) (param $c_out i32) (param $n i32)
    (local $block i32) (local $j i32) (local $a i32) (local $b i32) (local $cell v128)
    (local.set $block (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $units
        (br_if $done (i32.ge_u (local.get $j) (local.get $block)))
        (local.set $a (i32.add (local.get $gi) (local.get $j)))
        (local.set $b (i32.add (local.get $gh) (local.get $j)))
        (local.set $cell (f32x4.add
          (f32x4.mul (call $sigmoid (call $gate (i32.add (local.get $a) (local.get $block)) (i32.add (local.get $b) (local.get $block))))
                     (v128.load align=4 (i32.add (local.get $c) (local.get $j))))
          (f32x4.mul (call $sigmoid (call $gate (local.get $a) (local.get $b)))
                     (call $tanh (call $gate (i32.add (local.get $a) (i32.shl (local.get $block) (i32.const 1)))
                                             (i32.add (local.get $b) (i32.shl (local.get $block) (i32.const 1))))))))
        (v128.store align=4 (i32.add (local.get $c_out) (local.get $j)) (local.get $cell))
        (local.set $a (i32.add (local.get $a) (i32.mul (local.get $block) (i32.const 3))))
        (local.set $b (i32.add (local.get $b) (i32.mul (local.get $block) (i32.const 3))))
        (v128.store align=4 (i32.add (local.get $h_out) (local.get $j))
          (f32x4.mul (call $sigmoid (call $gate (local.get $a) (local.get $b))) (call $tanh (local.get $cell))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $units))))

  ;; nn.GRU's cell, blocks r, z, n: h_out = (1 - z) tanh(gi_n + r gh_n) + z h.
  (func (export "gru_gates")
    (param $gi i32) (param $gh i32) (param $h i32) (param $h_out i32) (param $n i32)
    (local $block i32) (local $j i32) (local $a i32) (local $b i32) (local $z v128) (local $new v128)
    (local.set $block (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $units
        (br_if $done (i32.ge_u (local.get $j) (local.get $block)))
        (local.set $a (i32.add (local.get $gi) (local.get $j)))
        (local.set $b (i32.add (local.get $gh) (local.get $j)))
        (local.set $z (call $sigmoid (call $gate (i32.add (local.get $a) (local.get $block)) (i32.add (local.get $b) (local.get $block)))))
        (local.set $new (call $tanh (f32x4.add
          (v128.load align=4 (i32.add (local.get $a) (i32.shl (local.get $block) (i32.const 1))))
          (f32x4.mul (call $sigmoid (call $gate (local.get $a) (local.get $b)))
                     (v128.load align=4 (i32.add (local.get $b) (i32.shl (local.get $block) (i32.const 1))))))))
        (v128.store align=4 (i32.add (local.get $h_out) (local.get $j))
          (f32x4.add (f32x4.mul (f32x4.sub (v128.const f32x4 1 1 1 1) (local.get $z)) (local.get $new))
                     (f32x4.mul (local.get $z) (v128.load align=4 (i32.add (local.get $h) (local.get $j))))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $units))))

  ;; nn.RNN's cell: h_out = tanh(gi + gh).
  (func (export "rnn_gates") (param $gi i32) (param $gh i32) (param $h_out i32) (param $n i32)
    (local $block i32) (local $j i32)
    (local.set $block (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $units
        (br_if $done (i32.ge_u (local.get $j) (local.get $block)))
        (v128.store align=4 (i32.add (local.get $h_out) (local.get $j))
          (call $tanh (call $gate (i32.add (local.get $gi) (local.get $j)) (i32.add (local.get $gh) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $units))))

  ;; Four units' gate input: gi + gh.
  (func $gate (param $gi i32) (param $gh i32) (result v128)
    (f32x4.add (v128.load align=4 (local.get $gi)) (v128.load align=4 (local.get $gh))))

  (func $sigmoid (param $x v128) (result v128)
    (f32x4.div (v128.const f32x4 1 1 1 1)
      (f32x4.add (v128.const f32x4 1 1 1 1) (call $exp (f32x4.neg (local.get $x))))))

  ;; tanh x = 1 - 2 / (exp(2x) + 1): within about 1e-7 of the exact value everywhere.
  (func $tanh (param $x v128) (result v128)
    (f32x4.sub (v128.const f32x4 1 1 1 1)
      (f32x4.div (v128.const f32x4 2 2 2 2)
        (f32x4.add (call $exp (f32x4.add (local.get $x) (local.get $x))) (v128.const f32x4 1 1 1 1)))))

  ;; exp x, after Cephes' expf: x = k ln 2 + r with |r| <= ln 2 / 2, exp r by a degree-7
  ;; polynomial, times 2^k made from k's bits. x is clamped where exp leaves float32's normal range.
  (func $exp (param $x v128) (result v128)
    (local $k v128) (local $r v128) (local $p v128)
    (local.set $x (f32x4.max (f32x4.min (local.get $x) (v128.const f32x4 88 88 88 88))
                             (v128.const f32x4 -87 -87 -87 -87)))
    (local.set $k (f32x4.nearest (f32x4.mul (local.get $x)
      (v128.const f32x4 1.44269504088896341 1.44269504088896341 1.44269504088896341 1.44269504088896341))))
    ;; r = x - k ln 2, with ln 2 in two parts so that k times the first is exact
    (local.set $r (f32x4.sub (f32x4.sub (local.get $x)
        (f32x4.mul (local.get $k) (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375)))
      (f32x4.mul (local.get $k) (v128.const f32x4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4))))
    (local.set $p (v128.const f32x4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r))
      (v128.const f32x4 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r))
      (v128.const f32x4 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r))
      (v128.const f32x4 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r))
      (v128.const f32x4 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r))
      (v128.const f32x4 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1)))
    ;; exp r = 1 + r + r^2 p
    (local.set $p (f32x4.add (f32x4.add (f32x4.mul (f32x4.mul (local.get $p) (local.get $r)) (local.get $r))
                                        (local.get $r))
                             (v128.const f32x4 1 1 1 1)))
    (f32x4.mul (local.get $p)
      (i32x4.shl (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $k)) (v128.const i32x4 127 127 127 127))
                 (i32.const 23))))

  ;; (the sum of a's lanes, of b's, of c's, of d's), by pairwise shuffles.
  (func $lane_sums (param $a v128) (param $b v128) (param $c v128) (param $d v128) (result v128)
    (local $ab v128) (local $cd v128)
    ;; (a0 + a2, a1 + a3, b0 + b2, b1 + b3), and the same of c and d
    (local.set $ab (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a) (local.get $b))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a) (local.get $b))))
    (local.set $cd (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $c) (local.get $d))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $c) (local.get $d))))
    (f32x4.add
      (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $ab) (local.get $cd))
      (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $ab) (local.get $cd))))

  ;; out[0] += the products of the columns of one row from byte `from` to byte `to`, one at a time.
  (func $add_tail (param $row i32) (param $x i32) (param $out i32) (param $from i32) (param $to i32)
    (local $sum f32)
    (local.set $sum (f32.load (local.get $out)))
    (block $done
      (loop $cols
        (br_if $done (i32.ge_u (local.get $from) (local.get $to)))
        (local.set $sum (f32.add (local.get $sum)
          (f32.mul (f32.load (i32.add (local.get $row) (local.get $from)))
                   (f32.load (i32.add (local.get $x) (local.get $from))))))
        (local.set $from (i32.add (local.get $from) (i32.const 4)))
        (br $cols)))
    (f32.store (local.get $out) (local.get $sum)))
)
