set -x
C="--env-id HalfCheetah-v5 --seed 1 --total-timesteps 524288 --eval-frequency 65536 --eval-episodes 5"
export OMP_NUM_THREADS=1
python ../../../baselines/reppo.py $C --exp-name reppo_alpha1e-3 --alpha-init 0.001 > reppo.out 2>&1
python ../../../baselines/wpo.py $C --exp-name wpo_alpha1e-3 --alpha-init 0.001 > wpo.out 2>&1
python ../../../diffwpo.py $C --exp-name diffwpo_c8 --target-entropy-scale 8 > diffwpo_c8.out 2>&1
python ../../../da_mdp_reppo.py $C --exp-name da_mdp_reppo_c5 --target-entropy-scale 5 > da_mdp_reppo_c5.out 2>&1
