# The `test` section: test-time augmentation (test.aug.*), inference precision (test.amp.*) and
# test.compile_backbone. The defaults and what each option means are in eva_det/config/defaults.py
# (the code reads them from there, so configs without this section get them too), e.g.
#   --eval-only --config-file CFG ... test.aug.enabled=True test.aug.min_sizes=[1024,1280,1536]
from eva_det.config.defaults import test_defaults

test = test_defaults()
