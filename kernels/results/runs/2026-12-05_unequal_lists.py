b, f, M, D = "bfloat16", "float16", "mamba2", "deltanet"
C = [("base", M, 40, 24, b, 200, ""), ("f16", M, 40, 24, f, 200, ""), ("f32", M, 40, 24, "float32", 200, ""),
 ("K=V=40", M, 40, 40, b, 200, ""), ("K=V=24", M, 24, 24, b, 200, ""), ("32/16", M, 32, 16, b, 200, ""),
 ("64/32", M, 64, 32, b, 200, ""), ("24/40", M, 24, 40, b, 200, ""),
 ("safe", M, 40, 24, b, 200, "dc.LAUNCH = dict(dc.SAFE)"), ("nofast", M, 40, 24, b, 200, "dc.FAST_PAIRS = False"),
 ("twopass", M, 40, 24, b, 200, "dc.FUSED_FORWARD = False"), ("dstate own", M, 40, 24, b, 200, "dc.DSTATE_FEW_TILES = None"),
 ("nodecayv", M, 40, 24, b, 200, "dc.DECAY_V = ()"), ("notma", M, 40, 24, b, 200, "dc.FUSED_TMA = False"),
 ("h32", M, 40, 24, b, 200, "dc._state_dtype = lambda d: torch.float32"),
 ("T=1", M, 40, 24, b, 1, ""), ("T=64", M, 40, 24, b, 64, ""),
 ("retnet", "retnet", 40, 24, b, 200, ""), ("linattn", "linear_attention", 40, 24, b, 200, ""),
 ("gla", "gla", 40, 24, b, 200, ""),
 ("d base", D, 40, 24, b, 1, ""), ("d T200", D, 40, 24, b, 200, ""), ("d f16", D, 40, 24, f, 1, ""),
 ("d nolaunch", D, 40, 24, b, 1, "dl.LAUNCH = {}"), ("d few32", D, 40, 24, b, 1, "dl.LAUNCH['state_few'] = dict(BV=32, num_warps=4, num_stages=2)"),
 ("d 40/32", D, 40, 32, b, 1, ""), ("d 32/16", D, 32, 16, b, 1, ""), ("d K=V=40", D, 40, 40, b, 1, ""),
 ("d 24/40", D, 24, 40, b, 1, ""), ("d twopass", D, 40, 24, b, 1, "dl.FUSED_FORWARD = False"),
 ("gdn", "gated_deltanet", 40, 24, b, 130, ""), ("longhorn", "longhorn", 40, 24, b, 130, ""),
]
C += [("d few st1", D, 40, 24, b, 1, "dl.LAUNCH['state_few'] = dict(BV=16, num_warps=4, num_stages=1)"),
      ("d few w2", D, 40, 24, b, 1, "dl.LAUNCH['state_few'] = dict(BV=16, num_warps=2, num_stages=2)"),
      ("d K=64,V=16", D, 64, 16, b, 1, ""), ("d K=48,V=16", D, 48, 16, b, 1, ""),
      ("m nopdl", M, 40, 24, b, 200, "dc.SEGMENT_PDL = False"),
      ("m nopdl twopass", M, 40, 24, b, 200, "dc.SEGMENT_PDL = False; dc.FUSED_FORWARD = False"),
      ("m B8H16", M, 40, 24, b, 200, "B_H = (8, 16)")]
b, f, M, D = "bfloat16", "float16", "mamba2", "deltanet"
EQ = "from kernels._common import next_pow2; dc._tiles = lambda K, V: (max(16, next_pow2(max(K, V))),) * 2"
ST1 = ("dc.LAUNCH = {k: dict(v, num_stages=1) for k, v in dc.LAUNCH.items()}; "
       "dc.SAFE = {k: dict(v, num_stages=1) for k, v in dc.SAFE.items()}")
C = [("m eq 40/24", M, 40, 24, b, 200, EQ), ("m eq 24/40", M, 24, 40, b, 200, EQ), ("m eq 32/16", M, 32, 16, b, 200, EQ),
     ("m eq 64/32", M, 64, 32, b, 200, EQ), ("m eq 40/24 f16", M, 40, 24, f, 200, EQ),
     ("m eq twopass", M, 40, 24, b, 200, EQ + "; dc.FUSED_FORWARD = False"), ("m eq T64", M, 40, 24, b, 64, EQ),
     ("retnet eq", "retnet", 40, 24, b, 200, EQ), ("m eq 128/64", M, 128, 64, b, 200, EQ),
     ("m st1 40/24", M, 40, 24, b, 200, ST1), ("m st1 24/40", M, 24, 40, b, 200, ST1),
     ("m 128/64", M, 128, 64, b, 200, ""),
     ("d 40/24", D, 40, 24, b, 200, ""), ("d 40/32", D, 40, 32, b, 200, ""), ("d 32/16", D, 32, 16, b, 200, ""),
     ("d K=V=40", D, 40, 40, b, 200, ""), ("d 24/40", D, 24, 40, b, 200, ""), ("d 64/32", D, 64, 32, b, 200, ""),
     ("d f16 40/24", D, 40, 24, f, 200, ""), ("d nolaunch", D, 40, 24, b, 200, "dl.LAUNCH = {}"),
     ("d fp32 operands", D, 40, 24, b, 200, "dl.HALF_OPERANDS = False"),
     ("d twopass", D, 40, 24, b, 200, "dl.FUSED_FORWARD = False"), ("d noseg", D, 40, 24, b, 200, "dl.SEGMENTS = False"),
     ("d T=64", D, 40, 24, b, 64, ""), ("d T=65", D, 40, 24, b, 65, ""), ("d 128/64", D, 128, 64, b, 200, ""),
     ("gdn fp32 operands", "gated_deltanet", 40, 24, b, 130, "dl.HALF_OPERANDS = False"),
     ("gdn nolaunch", "gated_deltanet", 40, 24, b, 130, "dl.LAUNCH = {}")]
b, f, M = "bfloat16", "float16", "mamba2"
C = [("m 32/16", M, 32, 16, b, 200, ""), ("m 64/32", M, 64, 32, b, 200, ""), ("m 16/32", M, 16, 32, b, 200, ""),
     ("m 40/24 T64", M, 40, 24, b, 64, ""), ("m 40/24 twopass", M, 40, 24, b, 200, "dc.FUSED_FORWARD = False"),
     ("m 24/40 twopass", M, 24, 40, b, 200, "dc.FUSED_FORWARD = False"), ("retnet 32/16", "retnet", 32, 16, b, 200, ""),
     ("m 40/24 f16", M, 40, 24, f, 200, ""), ("m 200/72", M, 200, 72, b, 200, ""), ("m 72/200", M, 72, 200, b, 200, ""),
     ("m 40/24 B8H16", M, 40, 24, b, 200, "B_H = (8, 16)"), ("m 256/128", M, 256, 128, b, 130, "")]
