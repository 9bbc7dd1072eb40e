# Sourced from the repo root by the lent-GPU scripts here: imagefit runs from src/ (the lent machine's torch is not
# the pinned one, so nothing is installed there), logs unbuffered, and the CIFAR-10 split is in $DATA, made from the
# carried datasets folder ($DATA_TAR_DIR, .gpu/datasets by default) unless it is already there.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DATA=${DATA:-/tmp/cifar}
if [ ! -d "$DATA/cifar-10-batches-py" ]; then
  made=$(python3 "${DATA_TAR_DIR:-.gpu/datasets}/make-cifar10" "$DATA" 2>&1) || { echo "$made"; echo "no data in $DATA"; exit 1; }
fi
