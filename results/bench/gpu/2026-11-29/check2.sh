export PYTHONUNBUFFERED=1
mkdir -p data && cp -r .gpu/MNIST data/ && gunzip -f data/MNIST/raw/*.gz
timeout 150 python3 .gpu/gpustep.py 2>&1 | tee $OUT/profile.log
timeout 60 python3 -m pytest -q --benchmark-only -k "classic_step and cuda" tests/test_bench.py -p no:cacheprovider 2>&1 | tail -8
